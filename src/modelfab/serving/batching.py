"""Dynamic batching: `plan` is the pure decision, `DynamicBatcher` the asyncio queue around it.

`plan` looks at a queue (how many items, when the oldest arrived, what time it is) and says
how many items to take now and how long to wait before deciding again. The batcher keeps
the queue, reads `time.monotonic()`, and runs one batch at a time in a thread, while the
next batch forms in the queue (pipelining): the event loop never blocks on a model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from modelfab.errors import ModelfabError

logger = logging.getLogger(__name__)

X = TypeVar("X")
Y = TypeVar("Y")

DEADLINE_SLACK_S = 1e-6
"""A deadline this close counts as reached, so float rounding of `now + wait_s` never
leaves the caller waking a hair early and spinning on a sub-microsecond wait."""


@dataclass(frozen=True)
class Decision:
    """What to do with the queue now."""

    take: int
    """Items to take from the head of the queue now; 0 for none."""
    wait_s: float | None
    """Seconds before the decision can change without a new arrival: 0.0 after a take
    (decide again once that batch is handed off), None when the queue is empty (only an
    arrival changes anything)."""


def plan(
    queued: int,
    oldest_enqueued_at: float | None,
    now: float,
    *,
    max_batch_size: int,
    max_wait_s: float,
    incoming: int | None = None,
) -> Decision:
    """Decide how many of `queued` items to take now. Pure; times in seconds on one clock.

    Takes `max_batch_size` as soon as that many are queued; takes everything queued (at
    most `max_batch_size`) once the oldest item has waited `max_wait_s`, or at once when
    `incoming` (items known to be on their way, e.g. images being decoded) is 0: waiting
    for nobody would only add latency. Otherwise takes nothing and waits until the oldest
    item's deadline. `incoming` None means unknown (always wait).

    Raises ValueError for queued < 0, max_batch_size < 1, max_wait_s < 0, or items queued
    without an `oldest_enqueued_at`.
    """
    if queued < 0 or max_batch_size < 1 or max_wait_s < 0:
        raise ValueError(
            f"need queued >= 0, max_batch_size >= 1, max_wait_s >= 0; got {queued}, "
            f"{max_batch_size}, {max_wait_s}"
        )
    if queued == 0:
        return Decision(take=0, wait_s=None)
    if oldest_enqueued_at is None:
        raise ValueError("items are queued, so oldest_enqueued_at is needed")
    if queued >= max_batch_size:
        return Decision(take=max_batch_size, wait_s=0.0)
    remaining = oldest_enqueued_at + max_wait_s - now
    if remaining <= DEADLINE_SLACK_S or incoming == 0:
        return Decision(take=queued, wait_s=0.0)
    return Decision(take=0, wait_s=remaining)


class BatcherClosed(ModelfabError):
    """The batcher is stopping or stopped: the replica is shutting down."""

    status = 503
    code = "replica_stopping"


@dataclass(slots=True)
class _Entry(Generic[X, Y]):
    item: X
    future: asyncio.Future[Y]
    enqueued_at: float


class DynamicBatcher(Generic[X, Y]):
    """Groups items submitted by concurrent requests into batches for `run_batch`.

    `run_batch(items) -> results` (one result per item, in order) blocks, e.g. in ONNX
    Runtime; it runs in `executor` (by default a thread of the batcher's own), one batch at
    a time, while the event loop keeps accepting items for the next batch. Which items form
    a batch is decided by `plan` with `max_batch_size` and `max_wait_s`, which can change
    at any time (the latest values apply to the next decision).

    There is no background task: the batcher decides when items arrive, when a batch ends
    (so the next one is handed to the thread in the same event-loop step) and when a
    `max_wait_s` timer fires. Use from one event loop: `start()` inside it, `submit()` from
    its tasks, `stop()` to drain.
    """

    def __init__(
        self,
        run_batch: Callable[[list[X]], Sequence[Y]],
        *,
        max_batch_size: int = 8,
        max_wait_s: float = 0.005,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        incoming: Callable[[], int] | None = None,
    ) -> None:
        """`incoming()`, when given, counts items on their way to `submit` (see `plan`)."""
        self._run_batch = run_batch
        self._incoming = incoming
        self._loop: asyncio.AbstractEventLoop | None = None
        self._max_batch_size = 1
        self._max_wait_s = 0.0
        self.configure(max_batch_size=max_batch_size, max_wait_s=max_wait_s)
        self._executor = executor
        self._owns_executor = executor is None
        self._clock = clock
        self._queue: deque[_Entry[X, Y]] = deque()
        self._running: Future[Sequence[Y]] | None = None
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._stopping = False
        self._drained = asyncio.Event()
        self.batches_run = 0
        """Batches handed to `run_batch` so far (finished or failed)."""

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    @property
    def max_wait_s(self) -> float:
        return self._max_wait_s

    @property
    def queued(self) -> int:
        """Items waiting for a batch (not counting the batch that runs)."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Items of the batch that runs now (0 when none runs)."""
        return self._in_flight

    def configure(
        self, *, max_batch_size: int | None = None, max_wait_s: float | None = None
    ) -> None:
        """Change the batching limits; None keeps a value. Raises ValueError when out of
        range (max_batch_size >= 1, max_wait_s >= 0)."""
        if max_batch_size is not None:
            if max_batch_size < 1:
                raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
            self._max_batch_size = max_batch_size
        if max_wait_s is not None:
            if max_wait_s < 0:
                raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
            self._max_wait_s = max_wait_s
        if self._loop is not None:
            self._pump()

    def start(self) -> None:
        """Bind to the running event loop. Idempotent; a stopped batcher cannot start again."""
        if self._stopping:
            raise RuntimeError("this batcher was stopped; make a new one")
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")

    async def submit(
        self,
        items: Sequence[X],
        *,
        max_batch_size: int | None = None,
        max_wait_s: float | None = None,
    ) -> list[Y]:
        """Queue `items` (possibly spread over several batches) and wait for their results,
        in order. `max_batch_size`/`max_wait_s`, when given, replace the batcher's limits
        (see `configure`).

        Raises what `run_batch` raised for a batch holding any of the items, BatcherClosed
        when the batcher is not running, ValueError for limits out of range.
        """
        if self._loop is None or self._stopping:
            raise BatcherClosed("this replica is shutting down; send the request again")
        self.configure(max_batch_size=max_batch_size, max_wait_s=max_wait_s)
        if not items:
            return []
        now = self._clock()
        futures: list[asyncio.Future[Y]] = [self._loop.create_future() for _ in items]
        self._queue.extend(_Entry(x, f, now) for x, f in zip(items, futures, strict=True))
        self._pump()
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return list(results)  # type: ignore[arg-type]  # no exceptions left, so all Y

    async def stop(self) -> None:
        """Stop accepting items, run everything already queued (without waiting for
        `max_wait_s`), wait for the last batch, then release the batcher's own thread."""
        self._stopping = True
        if self._loop is None:
            return
        self._pump()
        await self._drained.wait()
        if self._owns_executor and self._executor is not None:
            self._executor.shutdown(wait=False)

    def _pump(self) -> None:
        """Hand a batch to the thread when `plan` says so and none runs; otherwise arm a
        timer for when the decision can change. Runs on the event loop."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._running is not None:
            return  # _settle pumps again when the batch ends
        decision = self._decide()
        if decision.take:
            self._dispatch(decision.take)
        elif decision.wait_s is not None:
            assert self._loop is not None
            self._timer = self._loop.call_later(decision.wait_s, self._pump)
        elif self._stopping:
            self._drained.set()

    def _decide(self) -> Decision:
        while self._queue and self._queue[0].future.done():  # the caller went away
            self._queue.popleft()
        if any(e.future.done() for e in self._queue):
            self._queue = deque(e for e in self._queue if not e.future.done())
        oldest = self._queue[0].enqueued_at if self._queue else None
        return plan(
            len(self._queue),
            oldest,
            self._clock(),
            max_batch_size=self._max_batch_size,
            max_wait_s=0.0 if self._stopping else self._max_wait_s,
            incoming=self._incoming() if self._incoming is not None else None,
        )

    def _dispatch(self, take: int) -> None:
        """Submit the first `take` items to the executor; `_settle` runs on the event loop
        once they are done (one thread-to-loop hop per batch)."""
        assert self._loop is not None and self._executor is not None
        entries = [self._queue.popleft() for _ in range(take)]
        loop = self._loop
        running = self._executor.submit(self._run_batch, [e.item for e in entries])
        self._running = running
        self._in_flight = take

        def done(_: Future[Sequence[Y]]) -> None:
            try:
                loop.call_soon_threadsafe(self._settle, entries, running)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                logger.warning("a batch finished after its event loop closed")

        running.add_done_callback(done)

    def _settle(self, entries: list[_Entry[X, Y]], running: Future[Sequence[Y]]) -> None:
        """Settle exactly the futures of one finished batch, then pump the next one."""
        self._running = None
        self._in_flight = 0
        self.batches_run += 1
        try:
            results = running.result()
            if len(results) != len(entries):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(entries)}")
        except BaseException as exc:  # run_batch's errors belong to its callers
            error = exc if isinstance(exc, Exception) else BatcherClosed("the batch was stopped")
            for e in entries:
                if not e.future.done():
                    e.future.set_exception(error)
        else:
            for e, result in zip(entries, results, strict=True):
                if not e.future.done():
                    e.future.set_result(result)
        self._pump()
