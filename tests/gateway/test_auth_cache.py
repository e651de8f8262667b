"""The gateway's principal cache: a revoked key is forgotten at once (also when the
revocation lands while its lookup runs), and no entry outlives the key's expiry."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
from starlette.requests import Request

from modelfab.errors import NotFound
from modelfab.gateway import Gateway
from modelfab.gateway.auth import TtlCache


@dataclass(frozen=True)
class Principal:
    tenant_id: str = "t_1"
    key_id: str = "key_1"
    rate_limit_rps: float | None = None
    expires_at: float | None = None
    tokens_per_minute: int | None = None
    tokens_budget: int | None = None
    tokens_used: int = 0


def request(token: str) -> Request:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    return Request(scope)


def no_call(*_: object) -> object:
    raise AssertionError("not called in this test")


class CountingAuth:
    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.calls = 0
        self.during: list[object] = []  # callables run inside the lookup

    def __call__(self, token: str | None) -> Principal:
        self.calls += 1
        for hook in self.during:
            hook()  # type: ignore[operator]
        return self.principal


def gateway(auth: CountingAuth) -> Gateway:
    # no routes: each predict authenticates, then answers 404
    return Gateway(load_routes=dict, authenticate=auth, resolve_model=no_call, journal=None)


def predict(gw: Gateway, token: str = "tok") -> None:
    with pytest.raises(NotFound):
        asyncio.run(gw.predict(request(token), "parts"))


def test_forgetting_a_key_makes_the_next_predict_authenticate_again() -> None:
    auth = CountingAuth(Principal())
    gw = gateway(auth)
    predict(gw)
    predict(gw)
    assert auth.calls == 1  # cached
    gw.forget_key("key_other")
    predict(gw)
    assert auth.calls == 1  # another key's revocation keeps this entry
    gw.forget_key("key_1")
    predict(gw)
    assert auth.calls == 2


def test_a_revocation_during_the_lookup_is_not_cached_over() -> None:
    auth = CountingAuth(Principal())
    gw = gateway(auth)
    auth.during.append(lambda: gw.forget_key("key_1"))
    predict(gw)
    auth.during.clear()
    predict(gw)
    assert auth.calls == 2  # the first answer was read before the revoke: not kept


def test_an_entry_never_outlives_the_keys_expiry() -> None:
    auth = CountingAuth(Principal(expires_at=time.time() - 1))
    gw = gateway(auth)
    predict(gw)
    predict(gw)
    assert auth.calls == 2


def test_ttl_cache_put_takes_a_shorter_ttl_and_discards_by_value() -> None:
    now = [0.0]
    cache: TtlCache[str, int] = TtlCache(10.0, clock=lambda: now[0])
    cache.put("a", 1, ttl_s=0.5)
    cache.put("b", 2, ttl_s=60.0)  # never longer than the cache's own ttl
    cache.put("c", 3)
    now[0] = 0.6
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, 2, 3)
    cache.discard_where(lambda v: v == 3)
    assert cache.get("c") is None and cache.get("b") == 2
    now[0] = 10.1
    assert cache.get("b") is None
