"""Bearer tokens and the gateway's small time-bounded caches.

`parse_bearer` is the one parser of `Authorization` headers: the API's dependencies use
it too."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

from modelfab.errors import Unauthenticated

K = TypeVar("K")
V = TypeVar("V")


def parse_bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when there is no
    header. Raises Unauthenticated for any other scheme or an empty token."""
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("Authorization header must be 'Bearer <key>'")
    return token


class TtlCache(Generic[K, V]):
    """Values that expire `ttl_s` seconds after they were put; cleared whole when it holds
    `max_size` entries (a bound, not an LRU: misses only cost a lookup)."""

    def __init__(
        self,
        ttl_s: float,
        *,
        max_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.ttl_s = ttl_s
        self.max_size = max_size
        self.clock = clock
        self._items: dict[K, tuple[V, float]] = {}

    def get(self, key: K) -> V | None:
        hit = self._items.get(key)
        if hit is None or hit[1] <= self.clock():
            return None
        return hit[0]

    def put(self, key: K, value: V, *, ttl_s: float | None = None) -> None:
        """Keep `value` for `ttl_s` seconds (never longer than the cache's `ttl_s`); a
        `ttl_s` of 0 or less keeps nothing."""
        ttl = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        if ttl <= 0:
            self._items.pop(key, None)
            return
        if len(self._items) >= self.max_size:
            self._items.clear()
        self._items[key] = (value, self.clock() + ttl)

    def discard_where(self, predicate: Callable[[V], bool]) -> int:
        """Drop the entries whose value matches; returns how many. Safe to call from another
        thread than the one that reads (each dict operation is atomic)."""
        doomed = [k for k, (v, _) in list(self._items.items()) if predicate(v)]
        for key in doomed:
            self._items.pop(key, None)
        return len(doomed)
