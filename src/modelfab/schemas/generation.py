"""The wire between the gateway and a chat replica (`POST /models/{version}/generate`):
one request, answered by a server-sent event stream of one `GenerateStarted`, `GenerateDelta`s and
exactly one `GenerateFinished`. The gateway turns them into OpenAI's shapes; the final event carries
the engine's own token counts, which the gateway meters and strips."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class GenerateRequest(BaseModel):
    """Exactly one of `messages` (a chat, rendered with the model's template) and `prompt`
    (raw text, tokenized as is). The gateway has checked the ranges; the engine checks them
    again (it raises 400 naming the parameter)."""

    model_config = {"extra": "forbid"}

    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None


class GenerateStarted(BaseModel):
    """The first event: the request is queued and its templated prompt has this many tokens
    (so a stream cut before the end is still metered with its prompt)."""

    prompt_tokens: int


class GenerateDelta(BaseModel):
    """Text generated since the last event and how many tokens it took (the text may be ""
    while a stop string could still complete)."""

    text: str
    tokens: int


class GenerateFinished(BaseModel):
    """The last event: why it ended and the engine's counts (`completion_tokens` includes
    the stop token)."""

    finish_reason: Literal["stop", "length", "cancelled", "error"]
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


GenerateEvent = GenerateStarted | GenerateDelta | GenerateFinished
