"""The hub: foundation models recipes start from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelfab.schemas.common import WireModel


class HubModel(WireModel):
    id: str
    object: Literal["hub.model"] = "hub.model"
    task: str
    arch: str = Field(
        description="The timm model name (vision), or the transformers architecture (chat; "
        "the GGUF architecture for an imported GGUF)."
    )
    source: str = Field(description="package, import, scratch or hub.")
    licence: str
    params_m: float = Field(description="Parameters, in millions.")
    input_size: int | None = Field(
        default=None, description="Side of the square input, in pixels (vision models)."
    )
    context_length: int | None = Field(
        default=None, description="Longest sequence, in tokens (chat models)."
    )
    description: str
    available: bool = Field(description="Usable offline here now.")
    how: str = Field(description="How it is available, or what to run to make it so.")


class ImportedWeights(WireModel):
    id: str
    sha256: str = Field(
        description="Of the file; for a Hugging Face folder, over its files' paths and sha256s."
    )
    size: int = Field(description="Bytes.")
    imported_at: float
    original_filename: str
    format: Literal["pth", "gguf", "hf"] = Field(
        default="pth",
        description="pth: a torch state dict (vision); gguf: a GGUF file; hf: a Hugging Face "
        "model folder (chat).",
    )


class HubModelImported(HubModel):
    imported: ImportedWeights
    created: bool = Field(
        default=True,
        description="False when the same content was already imported under this name (the "
        "stored import is answered, with 200).",
    )
