"""`EngineDriver`: an engine's step loop in a background thread, so that an asyncio
server (or any thread) submits requests and reads their streams without ever running a
model step on its own thread.

An async server uses it like this:

    driver = EngineDriver(engine).start()
    stream = driver.submit(messages=[...], params=SamplingParams(max_tokens=200))
    try:
        async for event in stream:          # TokenDelta..., then one Finished
            ...                              # send event.text; meter the Finished counts
    finally:
        driver.cancel(stream.request_id)     # the client left: its slot frees at once
    ...
    driver.stop()

`submit` validates at once and raises the engine's 4xx errors in the caller's thread; it
never waits for a step. If a step raises, every live request ends with finish_reason
"error" (so no stream hangs) and the loop goes on with new requests.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Any

from modelfab.llm.engine.base import Engine
from modelfab.llm.engine.stream import RequestStream
from modelfab.llm.engine.types import EngineStats

logger = logging.getLogger(__name__)


class EngineDriver:
    def __init__(self, engine: Engine, *, name: str = "llm-engine"):
        self.engine = engine
        self._name = name
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> EngineDriver:
        """Start the step loop (idempotent); returns self."""
        if self._thread is None or not self._thread.is_alive():
            self._stopping.clear()
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """Whether the step loop's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop after the current step; requests still live end with "error" (the
        server is going away). Blocks up to `timeout` seconds for the thread."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.engine.abort("the engine stopped")

    def __enter__(self) -> EngineDriver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def submit(self, **request: Any) -> RequestStream:
        """`engine.add_request(**request)` and wake the loop. Raises what it raises."""
        stream = self.engine.add_request(**request)
        self._wake.set()
        return stream

    def cancel(self, request_id: str) -> bool:
        """`engine.cancel`; False when the request is unknown or already over."""
        cancelled = self.engine.cancel(request_id)
        self._wake.set()
        return cancelled

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before the check: a submit after it sets it again
            if not self.engine.has_work():
                self._wake.wait()
                continue
            try:
                self.engine.step()
            except Exception as exc:  # a bug or an OOM: end the streams, keep serving
                logger.exception("an engine step failed; ending its requests")
                self.engine.abort(f"the engine failed: {type(exc).__name__}")
