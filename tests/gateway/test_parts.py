"""The gateway's small parts, each with an injected clock: the bearer parser the API
shares, the rate limiter, the balancer's benching, usage journalling, the caches."""

from __future__ import annotations

import pytest

from modelfab.errors import Unauthenticated
from modelfab.gateway import Balancer, Forwarded, RateLimiter, ReplicaRoute, parse_bearer
from modelfab.gateway.auth import TtlCache
from modelfab.gateway.usage import record


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_one_bearer_parser_names_the_expected_header() -> None:
    assert parse_bearer(None) is None
    assert parse_bearer("Bearer abc ") == "abc"
    assert parse_bearer("bearer abc") == "abc"
    for bad in ("Basic abc", "Bearer", "Bearer   ", "abc"):
        with pytest.raises(Unauthenticated, match="Bearer <key>"):
            parse_bearer(bad)


def test_rate_limiter_allows_bursts_and_says_when_to_retry() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    assert limiter.take("k", None) == 0.0
    assert [limiter.take("k", 2.0) for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("k", 2.0) == pytest.approx(0.5)
    clock.t += 0.5
    assert limiter.take("k", 2.0) == 0.0


def test_balancer_prefers_the_least_busy_and_skips_benched_replicas() -> None:
    clock = Clock()
    balancer = Balancer(bench_s=2.0, clock=clock)
    a, b = ReplicaRoute("a", "http://a", "sa"), ReplicaRoute("b", "http://b", "sb")
    balancer.started("a")
    assert balancer.pick((a, b), set()) == b
    balancer.bench("b")
    assert balancer.pick((a, b), set()) == a
    assert balancer.pick((a, b), {"a"}) is None
    clock.t += 2.0
    assert balancer.pick((a, b), {"a"}) == b


def test_usage_is_journalled_for_answered_requests_only() -> None:
    calls: list[tuple[tuple[str, ...], dict[str, float]]] = []

    class Sink:
        def add(self, *args: str, **quantities: float) -> None:
            calls.append((args, quantities))

    record(Sink(), "t_1", "ep_1", Forwarded(200, b"{}", "application/json", items=3))
    record(Sink(), "t_1", "ep_1", Forwarded(422, b"{}", "application/json", items=0))
    record(None, "t_1", "ep_1", Forwarded(200, b"{}", "application/json", items=1))
    assert calls == [(("t_1", "endpoint", "ep_1"), {"requests": 1, "items": 3})]


def test_ttl_cache_expires_and_stays_bounded() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(10.0, max_size=2, clock=clock)
    cache.put("a", 1)
    assert cache.get("a") == 1
    clock.t += 10.0
    assert cache.get("a") is None
    cache.put("b", 2)
    cache.put("c", 3)  # full: cleared first
    assert cache.get("b") is None and cache.get("c") == 3
