"""The `Engine` protocol: what a replica's language-model server drives, whatever runs
underneath (transformers here; onnxruntime-genai or vLLM behind the same seam later).

Contract:
- `add_request` and `cancel` may be called from any thread; `step` from one thread at a
  time (`EngineDriver` runs it in a background thread). `add_request` validates at once
  (raising the `types` errors an API maps to 4xx) and returns the request's
  `RequestStream`; the request waits in a FIFO queue until a step admits it.
- Every request's stream ends with exactly one `Finished` record, also when cancelled or
  when the engine fails (`abort`), so a reader never hangs and metering always has counts.
- Adapters are an opt-in capability (`SupportsAdapters`, checked with `isinstance`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from modelfab.llm.engine.stream import RequestStream
from modelfab.llm.engine.types import EngineStats, SamplingParams
from modelfab.llm.tokenizer import ChatTokenizer

Message = Mapping[str, Any]


@runtime_checkable
class Engine(Protocol):
    tokenizer: ChatTokenizer
    context_length: int

    def add_request(
        self,
        *,
        prompt_ids: Sequence[int] | None = None,
        messages: Sequence[Message] | None = None,
        params: SamplingParams | None = None,
        adapter: str | None = None,
        request_id: str | None = None,
    ) -> RequestStream:
        """Queue a request (exactly one of `prompt_ids` and `messages`; messages are
        rendered with the chat template and its generation prompt)."""
        ...

    def step(self) -> None:
        """Admit queued requests into free slots, then generate one token for every
        running one. Blocks for the step."""
        ...

    def cancel(self, request_id: str) -> bool:
        """End a request now (queued) or at the latest at the next step boundary
        (running); its slot is free for the next admission. False when unknown/over."""
        ...

    def has_work(self) -> bool: ...

    def stats(self) -> EngineStats: ...

    def abort(self, reason: str) -> None:
        """End every live request with finish_reason "error" (the engine failed)."""
        ...


@runtime_checkable
class SupportsAdapters(Protocol):
    """Many LoRA adapters of the loaded base, chosen per request by name."""

    def register_adapter(self, name: str, folder: Path, *, pinned: bool = False) -> None: ...

    def pin_adapter(self, name: str, pinned: bool = True) -> None: ...


EngineLoader = Callable[..., Engine]
"""`loader(folder, **settings)`: an engine holding the chat model of `folder`."""

ENGINE_KINDS: dict[str, EngineLoader] = {}


def register_engine(kind: str, loader: EngineLoader) -> None:
    """One line per engine kind (see `modelfab.llm.engine.__init__`)."""
    ENGINE_KINDS[kind] = loader


def load_engine(kind: str, folder: Path, **settings: Any) -> Engine:
    """The engine of `kind` holding the chat model of `folder`. Raises ValueError for an
    unknown kind, naming the known ones."""
    try:
        loader = ENGINE_KINDS[kind]
    except KeyError:
        raise ValueError(
            f"unknown engine kind {kind!r}; known: {', '.join(sorted(ENGINE_KINDS))}"
        ) from None
    return loader(folder, **settings)
