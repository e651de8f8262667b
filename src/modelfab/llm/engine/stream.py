"""`RequestStream`: the events of one request, written by the engine's thread and read by
a plain thread (`for event in stream`) or an asyncio task (`async for event in stream`).

Why not an `asyncio.Queue`: the engine steps in its own thread, and asyncio queues may
only be touched from their loop's thread. The stream keeps its events in a deque under a
lock; a sync reader waits on a condition, an async reader on a future that the writer
resolves through `loop.call_soon_threadsafe`. So neither side ever blocks the other's
thread, and an asyncio server needs no executor to read tokens.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator

from modelfab.llm.engine.types import Finished, StreamEvent


class RequestStream:
    """The events of request `request_id`: `TokenDelta`s, then exactly one `Finished`
    (iteration stops after it). Single consumer: events are handed out once."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        self._events: deque[StreamEvent] = deque()
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._finished: Finished | None = None

    @property
    def finished(self) -> Finished | None:
        """The final record once the engine has written it (whether or not it was read)."""
        return self._finished

    def put(self, event: StreamEvent) -> None:
        """Append `event` and wake the reader. Called by the engine; never blocks long."""
        with self._cond:
            if self._finished is not None:
                return  # nothing follows the final record
            if isinstance(event, Finished):
                self._finished = event
            self._events.append(event)
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    def get(self, timeout: float | None = None) -> StreamEvent:
        """The next event, blocking up to `timeout` seconds. Raises TimeoutError."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._events), timeout):
                raise TimeoutError(f"no event for request {self.request_id} in {timeout} s")
            return self._events.popleft()

    def __iter__(self) -> Iterator[StreamEvent]:
        while True:
            event = self.get()
            yield event
            if isinstance(event, Finished):
                return

    async def next_event(self) -> StreamEvent:
        """The next event, awaiting it without blocking the loop."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._events:
                    return self._events.popleft()
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, future))
            await future

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        while True:
            event = await self.next_event()
            yield event
            if isinstance(event, Finished):
                return

    def wait(self, timeout: float | None = None) -> Finished:
        """Block until the final record, discarding the deltas not yet read; return it."""
        while True:
            event = self.get(timeout)
            if isinstance(event, Finished):
                return event


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
