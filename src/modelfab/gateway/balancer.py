"""Least-outstanding-requests balancing over an endpoint's ready replicas."""

from __future__ import annotations

import time
from collections.abc import Callable

from modelfab.gateway.types import ReplicaRoute


class Balancer:
    """Least outstanding requests over an endpoint's replicas; benched replicas are skipped
    for `bench_s` seconds. Not thread-safe: used from the event loop only."""

    def __init__(self, *, bench_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.bench_s = bench_s
        self.clock = clock
        self.outstanding: dict[str, int] = {}
        self._benched_until: dict[str, float] = {}

    def pick(self, replicas: tuple[ReplicaRoute, ...], exclude: set[str]) -> ReplicaRoute | None:
        """The usable replica with the fewest requests in flight, or None."""
        t = self.clock()
        usable = [
            r
            for r in replicas
            if r.job_id not in exclude and self._benched_until.get(r.job_id, 0.0) <= t
        ]
        if not usable:
            return None
        return min(usable, key=lambda r: self.outstanding.get(r.job_id, 0))

    def bench(self, job_id: str) -> None:
        self._benched_until[job_id] = self.clock() + self.bench_s

    def started(self, job_id: str) -> None:
        self.outstanding[job_id] = self.outstanding.get(job_id, 0) + 1

    def finished(self, job_id: str) -> None:
        self.outstanding[job_id] -= 1
