"""The in-memory route table the hot path reads, refreshed in the background.

A generation counter orders loads against invalidations: `invalidate()` bumps it, and a
load installs its table only if no invalidation came while it ran (else the table it
read may predate the change). The caller that waited on such a load still answers with
what it loaded: it asked before the change landed."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from modelfab.gateway.types import RouteTable

logger = logging.getLogger(__name__)


class Routes:
    """Holds the route table of `load` (a blocking call, run in a worker thread)."""

    def __init__(
        self,
        load: Callable[[], RouteTable],
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._load = load
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()  # invalidate() comes from request threads too
        self._table: RouteTable | None = None
        self._loaded_at = 0.0
        self._generation = 0
        self._background: asyncio.Task[None] | None = None

    async def get(self) -> RouteTable:
        """The route table. A stale one answers now and is refreshed in the background; a
        missing or invalidated one is loaded first. Raises what `load` raises."""
        with self._lock:
            table, loaded_at = self._table, self._loaded_at
        if table is None:
            return await self._refresh()
        if self.clock() - loaded_at > self.ttl_s and self._background is None:
            self._background = asyncio.create_task(self._refresh_in_background())
        return table

    def invalidate(self) -> None:
        """Make the next request load the routes (after an endpoint changed), and keep any
        load already running from installing its table. Thread-safe."""
        with self._lock:
            self._generation += 1
            self._table = None

    async def _refresh(self) -> RouteTable:
        with self._lock:
            generation = self._generation
        table = await run_in_threadpool(self._load)
        with self._lock:
            if generation == self._generation:
                self._table, self._loaded_at = table, self.clock()
        return table

    async def _refresh_in_background(self) -> None:
        try:
            await self._refresh()
        except Exception:  # the next request retries; the stale table keeps answering
            logger.exception("refreshing the route table failed")
        finally:
            self._background = None
