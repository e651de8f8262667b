"""OpenAI's answers of `/v1/chat/completions` and `/v1/completions`, as modelfab sends them
(the gateway builds them as dicts on the hot path; these models document them in OpenAPI
and a test checks the dicts against them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelfab.schemas.common import WireModel

FinishReason = Literal["stop", "length"]


class CompletionUsage(WireModel):
    """The engine's counts, as metered (`tokens_in`, `tokens_out`)."""

    prompt_tokens: int = Field(description="Tokens of the templated prompt.")
    completion_tokens: int = Field(description="Generated tokens, the stop token included.")
    total_tokens: int


class ChatMessage(WireModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(WireModel):
    index: int = 0
    message: ChatMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(WireModel):
    id: str = Field(description="chatcmpl-...")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(description="UNIX seconds.")
    model: str = Field(description="The endpoint's name, as asked.")
    choices: list[ChatChoice]
    usage: CompletionUsage


class ChunkDelta(WireModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(WireModel):
    index: int = 0
    delta: ChunkDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(WireModel):
    """One server-sent event of a streamed chat answer: the role, text pieces, the finish;
    with `stream_options.include_usage` a last chunk with `choices: []` and the usage."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None


class TextChoice(WireModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = None


class TextCompletion(WireModel):
    """A `/v1/completions` answer, or (streamed) one of its chunks."""

    id: str = Field(description="cmpl-...")
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: CompletionUsage | None = None
