"""`TransformersEngine`: continuous batching over a transformers chat model with the
engine's own decode loop and key/value cache, and many LoRA adapters in one batch.

A step: (1) apply cancels, (2) admit queued requests while fewer than `max_concurrency`
run — each new prompt is run alone (no padding; its first token is sampled) and its keys
join the batch cache as a new row, (3) run one token for every running row in one
forward, (4) drop the rows that finished. So a request joins at the next step boundary
and leaves the moment it ends; nobody waits for anybody's end. The queue beyond
`max_concurrency` is FIFO: a request whose adapter cannot be loaded yet (every resident
adapter in use or pinned) holds the head until a running one finishes.

Threads: `add_request`, `cancel`, `stats` and the adapter calls may come from any thread
(they take short locks); `step` from one thread (see `EngineDriver`). Weights and caches
change only under the step lock.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel

from modelfab.llm.encoding import render_chat
from modelfab.llm.engine.adapters import AdapterBank, BaseIdentity
from modelfab.llm.engine.base import Message
from modelfab.llm.engine.decoder import Decoder
from modelfab.llm.engine.kv_cache import BatchCache, PrefillCache
from modelfab.llm.engine.sampling import make_generator, next_tokens
from modelfab.llm.engine.stream import RequestStream
from modelfab.llm.engine.text import AnswerText
from modelfab.llm.engine.types import (
    BadParameter,
    ContextTooLong,
    EngineOverloaded,
    EngineStats,
    Finished,
    FinishReason,
    SamplingParams,
    TokenDelta,
)
from modelfab.llm.models import load_chat_model
from modelfab.llm.tokenizer import ChatTokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    max_concurrency: int = 8
    """Sequences generating at once (rows of the batch); more wait in the queue."""
    max_queue: int = 1024
    """Requests waiting beyond that; one more is refused (EngineOverloaded, 429)."""
    adapter_budget_bytes: int = 256 * 2**20
    """Memory for loaded LoRA weights; least recently used adapters leave beyond it."""
    stats_window_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {self.max_concurrency}")


@dataclass(eq=False)
class _Sequence:
    id: str
    prompt: list[int]
    params: SamplingParams
    adapter: str | None
    stream: RequestStream
    text: AnswerText
    max_tokens: int
    generator: torch.Generator | None
    completion: list[int] = field(default_factory=list)
    slot: int | None = None
    finish: FinishReason | None = None


class TransformersEngine:
    """The CPU (fp32) engine; bf16 on CUDA works the same way but is untested here."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: ChatTokenizer,
        *,
        base: BaseIdentity,
        config: EngineConfig | None = None,
    ):
        self.config = config or EngineConfig()
        self.tokenizer = tokenizer
        self._decoder = Decoder(model)
        self.context_length = _context_length(model, tokenizer)
        self._eos = _eos_ids(model, tokenizer)
        self._bank = AdapterBank(model, base, self.config.adapter_budget_bytes)
        self._cache = BatchCache(
            self._decoder.layers,
            self._decoder.kv_heads,
            self._decoder.head_dim,
            self._decoder.dtype,
            self._decoder.device,
        )
        self._lock = threading.Lock()  # queue, live requests, cancels, counters
        self._step_lock = threading.Lock()  # model, caches, running batch
        self._queue: deque[_Sequence] = deque()
        self._live: dict[str, _Sequence] = {}
        self._cancels: set[str] = set()
        self._running: list[_Sequence] = []  # row i of the batch cache is _running[i]
        self._recent: deque[tuple[float, int]] = deque()
        self._generated = 0
        self._prompted = 0

    @classmethod
    def load(
        cls,
        folder: Path,
        *,
        base_name: str | None = None,
        config: EngineConfig | None = None,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> TransformersEngine:
        """The engine over the chat-model folder `folder` (`save_chat_model`'s layout);
        `base_name` is its hub name (default: the folder's name), what adapters' lineage
        is checked against. fp32 on a CPU, bf16 on CUDA by default."""
        if dtype is None:
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model, tokenizer = load_chat_model(folder, device=device, dtype=dtype)
        if model.config._attn_implementation not in ("sdpa", "eager"):
            model.set_attn_implementation("sdpa")  # our additive masks need sdpa or eager
        identity = BaseIdentity(name=base_name or folder.name, folder=folder)
        return cls(model, tokenizer, base=identity, config=config)

    # Requests (any thread)

    def add_request(
        self,
        *,
        prompt_ids: Sequence[int] | None = None,
        messages: Sequence[Message] | None = None,
        params: SamplingParams | None = None,
        adapter: str | None = None,
        request_id: str | None = None,
    ) -> RequestStream:
        """Queue a request; see `Engine.add_request`. Raises BadParameter, ContextTooLong,
        AdapterNotFound or EngineOverloaded."""
        params = params or SamplingParams()
        prompt = self._prompt(prompt_ids, messages)
        max_tokens = self._max_tokens(len(prompt), params)
        if adapter is not None:
            self._bank.check_known(adapter)
        request_id = request_id or f"req-{uuid.uuid4().hex[:16]}"
        stream = RequestStream(request_id)
        seq = _Sequence(
            id=request_id,
            prompt=prompt,
            params=params,
            adapter=adapter,
            stream=stream,
            text=AnswerText(self.tokenizer, params.stop),
            max_tokens=max_tokens,
            generator=make_generator(params),
        )
        with self._lock:
            if request_id in self._live:
                raise BadParameter(f"request id {request_id!r} is already running", "request_id")
            if len(self._queue) >= self.config.max_queue:
                raise EngineOverloaded(
                    f"{len(self._queue)} requests are waiting already; retry in a moment"
                )
            self._queue.append(seq)
            self._live[request_id] = seq
        return stream

    def _prompt(
        self, prompt_ids: Sequence[int] | None, messages: Sequence[Message] | None
    ) -> list[int]:
        if (prompt_ids is None) == (messages is None):
            raise BadParameter("give exactly one of prompt_ids and messages", "messages")
        if messages is not None:
            try:
                text = render_chat(self.tokenizer, messages, add_generation_prompt=True)
            except ValueError as exc:
                raise BadParameter(str(exc), "messages") from exc
            prompt = self.tokenizer.encode(text)
        else:
            prompt = [int(t) for t in prompt_ids or ()]
        vocab = self.tokenizer.vocab_size
        if not prompt or any(not 0 <= t < vocab for t in prompt):
            raise BadParameter(f"the prompt must be token ids in [0, {vocab})", "prompt")
        return prompt

    def _max_tokens(self, prompt_tokens: int, params: SamplingParams) -> int:
        room = self.context_length - prompt_tokens
        asked = params.max_tokens
        if room < 1 or (asked is not None and asked > room):
            raise ContextTooLong(
                f"this model's context is {self.context_length} tokens; the prompt has "
                f"{prompt_tokens}"
                + (f" and max_tokens asks {asked} more" if asked else "")
                + "; shorten the prompt or lower max_tokens",
                param="messages" if asked is None or room < 1 else "max_tokens",
            )
        return asked if asked is not None else room

    def cancel(self, request_id: str) -> bool:
        """See `Engine.cancel`: a queued request ends now; a running one now if no step is
        in progress, else when the current step ends."""
        with self._lock:
            seq = self._live.get(request_id)
            if seq is None:
                return False
            queued = seq in self._queue
            if queued:
                self._queue.remove(seq)
            else:
                self._cancels.add(request_id)
        if queued:
            self._finish(seq, "cancelled")
            return True
        if self._step_lock.acquire(blocking=False):
            try:
                with torch.inference_mode():  # the caches are inference tensors
                    self._apply_cancels()
            finally:
                self._step_lock.release()
        return True

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._queue or self._running or self._cancels)

    def stats(self) -> EngineStats:
        now = time.monotonic()
        with self._lock:
            self._trim_recent(now)
            window = self.config.stats_window_s
            recent = sum(n for _, n in self._recent)
            span = min(window, now - self._recent[0][0]) if self._recent else window
            return EngineStats(
                queue_depth=len(self._queue),
                running=len(self._running),
                max_concurrency=self.config.max_concurrency,
                tokens_per_s=recent / span if span > 0 else 0.0,
                window_s=window,
                generated_tokens=self._generated,
                prompt_tokens=self._prompted,
                adapter_budget_bytes=self.config.adapter_budget_bytes,
                adapters=self._bank.residency(),
            )

    def _trim_recent(self, now: float) -> None:
        while self._recent and now - self._recent[0][0] > self.config.stats_window_s:
            self._recent.popleft()

    # Adapters (any thread; they wait for the current step to end)

    def register_adapter(self, name: str, folder: Path, *, pinned: bool = False) -> None:
        """Check adapter `name` in `folder` against the base and record it (its weights
        load on first use). Raises AdapterRefused."""
        with self._step_lock, torch.inference_mode():
            self._bank.register(name, folder, pinned=pinned)

    def pin_adapter(self, name: str, pinned: bool = True) -> None:
        """Keep `name` resident once loaded (or let it be evicted again). Raises
        AdapterNotFound."""
        with self._step_lock:
            self._bank.set_pinned(name, pinned)

    # The step (one thread)

    def step(self) -> None:
        with self._step_lock, torch.inference_mode():
            self._apply_cancels()
            self._admit()
            if self._running:
                self._decode()

    def abort(self, reason: str) -> None:
        with self._lock:
            self._queue.clear()
            live = list(self._live.values())
        for seq in live:
            self._finish(seq, "error", error=reason)
        with self._step_lock, torch.inference_mode():
            while self._running:
                self._leave(self._running[-1])
            # A step that failed half-way may have left a row or an adapter use behind.
            self._cache.clear()
            self._bank.release_all()

    def _apply_cancels(self) -> None:
        with self._lock:
            cancels, self._cancels = self._cancels, set()
        for seq in [s for s in self._running if s.id in cancels]:
            self._leave(seq)
            self._finish(seq, "cancelled")

    def _admit(self) -> None:
        while len(self._running) < self.config.max_concurrency:
            with self._lock:
                if not self._queue:
                    return
                seq = self._queue[0]
            # Loading an adapter takes a while: outside the lock, so requests still queue.
            slot = self._bank.acquire(seq.adapter) if seq.adapter is not None else None
            if seq.adapter is not None and slot is None:
                return  # its adapter fits once a running sequence releases one
            with self._lock:
                admitted = bool(self._queue) and self._queue[0] is seq
                if admitted:
                    self._queue.popleft()
            if not admitted:  # cancelled meanwhile
                if seq.adapter is not None:
                    self._bank.release(seq.adapter)
                continue
            seq.slot = slot
            self._prefill(seq)

    def _prefill(self, seq: _Sequence) -> None:
        length = len(seq.prompt)
        ids = torch.tensor([seq.prompt], device=self._decoder.device)
        positions = torch.arange(length, device=self._decoder.device)[None]
        prefill = PrefillCache()
        self._bank.rows.set([seq.slot], self._decoder.device)
        logits = self._decoder.last_logits(
            ids, positions, self._decoder.causal_mask(length), prefill
        )
        self._cache.add_row(prefill)
        self._running.append(seq)
        with self._lock:
            self._prompted += length
        self._accept([seq], logits)

    def _decode(self) -> None:
        rows = list(self._running)
        positions, mask = self._cache.begin_step()
        ids = torch.tensor([[s.completion[-1]] for s in rows], device=self._decoder.device)
        self._bank.rows.set([s.slot for s in rows], self._decoder.device)
        logits = self._decoder.last_logits(ids, positions, mask, self._cache)
        self._cache.end_step()
        self._accept(rows, logits)

    def _accept(self, rows: list[_Sequence], logits: torch.Tensor) -> None:
        """Append each row's next token, stream it, and let finished rows leave."""
        chosen = next_tokens(logits, [s.params for s in rows], [s.generator for s in rows])
        at = time.monotonic()
        with self._lock:
            self._generated += len(chosen)
            self._recent.append((at, len(chosen)))
            self._trim_recent(at)  # bounded also when nobody asks for stats
        for seq, token in zip(rows, chosen, strict=True):
            seq.completion.append(token)
            eos = token in self._eos and not seq.params.ignore_eos
            # An end-of-turn token is counted but is no text (also when it is not special).
            visible = seq.completion[:-1] if eos else seq.completion
            text, stopped = seq.text.feed(visible)
            if eos or stopped:
                seq.finish = "stop"
            elif len(seq.completion) >= seq.max_tokens:
                seq.finish = "length"
            if seq.finish is not None and not stopped:
                text += seq.text.flush(visible)
            seq.stream.put(TokenDelta(token_ids=(token,), text=text))
            if seq.finish is not None:
                self._leave(seq)
                self._finish(seq, seq.finish)

    def _leave(self, seq: _Sequence) -> None:
        """Drop `seq`'s row (the last row takes its place) and release its adapter."""
        row = self._running.index(seq)
        moved = self._cache.remove_row(row)
        last = self._running.pop()
        if moved is not None:
            self._running[row] = last
        if seq.adapter is not None and seq.slot is not None:
            self._bank.release(seq.adapter)
            seq.slot = None
        if not self._running:
            self._bank.rows.clear()

    def _finish(self, seq: _Sequence, reason: FinishReason, error: str | None = None) -> None:
        with self._lock:
            self._live.pop(seq.id, None)
        seq.stream.put(
            Finished(
                request_id=seq.id,
                finish_reason=reason,
                prompt_tokens=len(seq.prompt),
                completion_tokens=len(seq.completion),
                text=seq.text.text,
                completion_ids=tuple(seq.completion),
                error=error,
            )
        )


def _context_length(model: PreTrainedModel, tokenizer: ChatTokenizer) -> int:
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    return min(int(x) for x in limits if x)


def _eos_ids(model: PreTrainedModel, tokenizer: ChatTokenizer) -> frozenset[int]:
    """The tokenizer's end of turn and the generation config's EOS ids."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    extra = configured if isinstance(configured, list) else [configured]
    return frozenset(itertools.chain([tokenizer.eos_id], (int(t) for t in extra if t is not None)))
