"""Per-key rate limits: a token bucket per API key."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per key: `rate` requests per second, bursts of up to max(1, rate).
    Not thread-safe: used from the event loop only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key_id: str, rate: float | None) -> float:
        """Take a token; returns 0, or the seconds until one is free (nothing taken)."""
        if rate is None:
            return 0.0
        t = self.clock()
        burst = max(1.0, rate)
        b = self._buckets.setdefault(key_id, _Bucket(burst, t))
        b.tokens = min(burst, b.tokens + (t - b.at) * rate)
        b.at = t
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / rate
