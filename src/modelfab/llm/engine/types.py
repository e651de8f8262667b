"""What goes into and comes out of a language-model engine: sampling params, the events of
a request's stream, statistics, and the errors an engine raises (torch-free)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from modelfab.errors import InvalidRequest, ModelfabError, NotFound

FinishReason = Literal["stop", "length", "cancelled", "error"]
"""Why a request ended: an end-of-turn token or stop string ("stop"), `max_tokens` or the
context ("length"), a `cancel` ("cancelled"), or an engine failure ("error")."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. Temperature 0 is greedy (argmax); otherwise softmax at
    `temperature`, cut to the smallest set of tokens whose probability reaches `top_p`, drawn
    with a generator of the request's own seeded by `seed` (None: a random seed), so a
    seeded request draws the same tokens alone or batched with others."""

    max_tokens: int | None = None
    """Generated tokens at most (the stop token included); None: up to the context."""
    temperature: float = 1.0
    top_p: float = 1.0
    stop: Sequence[str] = ()
    """Strings that end the answer; the text returned stops before the first one found."""
    seed: int | None = None
    ignore_eos: bool = False
    """Generate through end-of-turn tokens (benchmarks: the same work for every request)."""

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise BadParameter(
                f"max_tokens must be at least 1, not {self.max_tokens}", "max_tokens"
            )
        if not (0.0 <= self.temperature <= 2.0) or math.isnan(self.temperature):
            raise BadParameter(
                f"temperature must be between 0 and 2, not {self.temperature}", "temperature"
            )
        if not (0.0 < self.top_p <= 1.0):
            raise BadParameter(f"top_p must be in (0, 1], not {self.top_p}", "top_p")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise BadParameter("stop must be a list of non-empty strings", "stop")
        if len(self.stop) > 4:
            raise BadParameter(f"stop takes at most 4 strings, not {len(self.stop)}", "stop")


@dataclass(frozen=True)
class TokenDelta:
    """Tokens generated in one step and the text they add. `text` may be "" while the end
    of the text could still be the start of a stop string or of a multi-byte character: it
    is sent with a later delta (or dropped when the stop string completes)."""

    token_ids: tuple[int, ...]
    text: str


@dataclass(frozen=True)
class Finished:
    """The last event of every request: counts come from the engine's own token ids, so
    they are what metering bills. `completion_tokens` counts every generated token,
    the end-of-turn token included, also for a cancelled request (what was generated
    before the cancel took effect)."""

    request_id: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    text: str
    """The whole answer as streamed (stop string and special tokens left out)."""
    completion_ids: tuple[int, ...] = ()
    error: str | None = None
    """What failed, for finish_reason "error"."""


StreamEvent = TokenDelta | Finished


@dataclass(frozen=True)
class AdapterResidency:
    name: str
    loaded: bool
    pinned: bool
    bytes: int
    """Its LoRA weights (fp32 or the engine's dtype), counted against the memory budget."""
    running: int
    """Sequences of the batch using it now (an adapter in use is never evicted)."""


@dataclass(frozen=True)
class EngineStats:
    queue_depth: int
    running: int
    max_concurrency: int
    tokens_per_s: float
    """Generated tokens per second over the last `window_s` seconds."""
    window_s: float
    generated_tokens: int
    """Since the engine started."""
    prompt_tokens: int
    adapter_budget_bytes: int
    adapters: tuple[AdapterResidency, ...] = field(default_factory=tuple)

    @property
    def adapter_bytes(self) -> int:
        return sum(a.bytes for a in self.adapters if a.loaded)


class EngineError(ModelfabError):
    """Root of what an engine refuses."""


class BadParameter(InvalidRequest):
    """A sampling parameter out of range; `param` names it. 400, as OpenAI answers."""

    status = 400
    code = "invalid_parameter"

    def __init__(self, message: str, param: str):
        super().__init__(message, param=param)


class ContextTooLong(InvalidRequest):
    """The prompt (with `max_tokens`) does not fit the model's context; the message names
    the limit."""

    status = 400
    code = "context_length_exceeded"


class AdapterNotFound(NotFound):
    code = "adapter_not_found"


class AdapterRefused(InvalidRequest):
    """An adapter folder cannot run on the loaded base: another base model, shapes that do
    not fit, or a LoRA feature the engine does not run (DoRA, trained embeddings...)."""

    status = 400
    code = "adapter_refused"


class EngineOverloaded(ModelfabError):
    """The queue is full; retry later."""

    status = 429
    code = "engine_overloaded"
