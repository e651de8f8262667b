"""The OpenAI embeddings API (`POST /v1/embeddings`): OpenAI's request and answer, so the
`openai` client calls it unchanged. `model` is the name of one of the caller's endpoints
serving an embeddings model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelfab.schemas.common import RequestModel, WireModel
from modelfab.schemas.limits import MAX_EMBEDDING_DIMENSIONS

MAX_INPUTS = 64
"""Texts per request at most (a replica's limit of items per request)."""


class EmbeddingCreate(RequestModel):
    """OpenAI's `EmbeddingCreateParams`. Token-id inputs (lists of integers) are refused:
    the model's own tokenizer reads text."""

    model: str = Field(description="The name of your endpoint serving an embeddings model.")
    input: str | list[str] = Field(
        description=f"A text, or a list of 1 to {MAX_INPUTS} texts (none empty)."
    )
    encoding_format: Literal["float", "base64"] = Field(
        default="float",
        description="float: lists of numbers; base64: each vector's little-endian float32 "
        "bytes in base64 (what the openai client asks for and decodes).",
    )
    dimensions: int | None = Field(
        default=None,
        ge=1,
        le=MAX_EMBEDDING_DIMENSIONS,
        description="Taken only when equal to the model's own dimensions.",
    )
    user: str | None = Field(default=None, description="Accepted and ignored.")


class EmbeddingObject(WireModel):
    object: Literal["embedding"] = "embedding"
    index: int = Field(description="The input's position in the request.")
    embedding: list[float] | str = Field(description="The vector, or its base64 float32 bytes.")


class EmbeddingUsage(WireModel):
    prompt_tokens: int = Field(
        description="Tokens of every input under the model's tokenizer (special tokens "
        "included): what is metered as tokens_in."
    )
    total_tokens: int = Field(description="Equal to prompt_tokens.")


class EmbeddingList(WireModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str = Field(description="The endpoint that answered.")
    usage: EmbeddingUsage
