"""Token quotas of the language-model routes: the bucket reserves, refunds and says when to
retry; the budget counts what the process metered since the caller's load; and the gateway
answers 429 (or 400 for a request that can never fit) with a fake replica behind it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as StarletteRoute

from modelfab.api import errors as api_errors
from modelfab.errors import QuotaExceeded
from modelfab.gateway import Gateway, ReplicaRoute, Route
from modelfab.gateway.errors import BadRequest, RateLimited
from modelfab.gateway.openai_chat import chat_completions
from modelfab.gateway.token_limits import TokenBuckets, TokenQuotas, estimate_tokens
from modelfab.schemas.embeddings import EmbeddingList
from modelfab.serving.replica_app import ReplicaServer
from modelfab.settings import GatewaySettings
from modelfab.sse import event
from tests.gateway.callers import Principal


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# -- the bucket ------------------------------------------------------------------------------


def test_a_bucket_starts_full_and_refuses_what_it_cannot_cover_saying_when() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock)
    assert buckets.reserve("k", 600, 500) == 0.0  # 100 left
    wait = buckets.reserve("k", 600, 300)  # 200 short at 10 tokens/s
    assert wait == pytest.approx(20.0)
    assert buckets.available("k", 600) == pytest.approx(100.0)  # a refusal takes nothing
    clock.t += 20.0
    assert buckets.reserve("k", 600, 300) == 0.0


def test_settling_refunds_the_unused_part_and_charges_an_overrun() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock)
    buckets.reserve("k", 600, 500)
    buckets.settle("k", 600, reserved=500, used=120)
    assert buckets.available("k", 600) == pytest.approx(480.0)
    buckets.reserve("k", 600, 400)
    buckets.settle("k", 600, reserved=400, used=900)  # the estimate was short: debt
    assert buckets.available("k", 600) == pytest.approx(-420.0)
    assert buckets.reserve("k", 600, 60) == pytest.approx(48.0)  # (60 + 420) / 10


def test_a_bucket_never_refills_past_its_capacity_and_keys_are_apart() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock)
    buckets.reserve("a", 60, 60)
    clock.t += 3600
    buckets.settle("a", 60, reserved=60, used=0)
    assert buckets.available("a", 60) == 60.0
    assert buckets.reserve("b", 60, 60) == 0.0
    assert buckets.reserve("b", 60, 1) > 0


def test_the_prompt_estimate_counts_bytes_and_a_template_overhead_per_text() -> None:
    assert estimate_tokens(["abcd", "abcde"]) == (1 + 4) + (2 + 4)
    assert estimate_tokens([]) == 0


# -- quotas: per key and per tenant ------------------------------------------------------------


def test_a_reservation_is_settled_once_with_the_metered_tokens() -> None:
    quotas = TokenQuotas(reserve_max_tokens=256, clock=Clock())
    caller = Principal(tokens_per_minute=100)
    held = quotas.reserve(caller, prompt_tokens=10, max_tokens=50, prompt_param="messages")
    assert held.tokens == 60 and quotas.buckets.available("k_1", 100) == pytest.approx(40.0)
    quotas.settle(held, 25)
    quotas.settle(held, 0)  # once only
    assert quotas.buckets.available("k_1", 100) == pytest.approx(75.0)


def test_an_unset_max_tokens_reserves_the_default_capped_by_the_capacity() -> None:
    quotas = TokenQuotas(reserve_max_tokens=256, clock=Clock())
    held = quotas.reserve(
        Principal(tokens_per_minute=100), prompt_tokens=30, max_tokens=None, prompt_param="prompt"
    )
    assert held.tokens == 100  # 30 + min(256, 100 - 30)
    roomy = quotas.reserve(
        Principal(key_id="k_2", tokens_per_minute=10_000),
        prompt_tokens=30,
        max_tokens=None,
        prompt_param="prompt",
    )
    assert roomy.tokens == 286


def test_a_request_larger_than_the_whole_limit_is_400_naming_what_to_lower() -> None:
    quotas = TokenQuotas(reserve_max_tokens=256, clock=Clock())
    caller = Principal(tokens_per_minute=100)
    with pytest.raises(BadRequest) as caught:
        quotas.reserve(caller, prompt_tokens=10, max_tokens=500, prompt_param="messages")
    assert caught.value.code == "request_too_large" and caught.value.param == "max_tokens"
    assert "100 tokens per minute" in caught.value.message
    with pytest.raises(BadRequest) as caught:
        quotas.reserve(caller, prompt_tokens=300, max_tokens=None, prompt_param="input")
    assert caught.value.param == "input"
    assert quotas.buckets.available("k_1", 100) == 100.0  # nothing taken


def test_the_budget_counts_the_load_plus_what_this_process_metered_since() -> None:
    quotas = TokenQuotas(reserve_max_tokens=256, clock=Clock())
    caller = Principal(tokens_budget=1000, tokens_used=900)
    quotas.budgets.add("t_1", 5_000)  # metered before the load: already in tokens_used
    quotas.loaded(caller)
    held = quotas.reserve(caller, prompt_tokens=10, max_tokens=10, prompt_param="messages")
    quotas.settle(held, 99)  # 999 used
    quotas.settle(quotas.reserve(caller, prompt_tokens=1, max_tokens=1, prompt_param="messages"), 1)
    with pytest.raises(QuotaExceeded) as caught:
        quotas.reserve(caller, prompt_tokens=1, max_tokens=1, prompt_param="messages")
    assert caught.value.status == 429 and caught.value.code == "token_budget_exhausted"
    assert "1000 of its token budget of 1000" in caught.value.message
    quotas.loaded(Principal(tokens_budget=2000, tokens_used=1000))  # raised, reloaded
    quotas.reserve(
        Principal(tokens_budget=2000, tokens_used=1000),
        prompt_tokens=1,
        max_tokens=1,
        prompt_param="messages",
    )


def test_without_limits_nothing_is_held() -> None:
    quotas = TokenQuotas(reserve_max_tokens=256, clock=Clock())
    held = quotas.reserve(Principal(), prompt_tokens=10**9, max_tokens=None, prompt_param="p")
    quotas.settle(held, 10**9)
    assert held.tpm is None


def test_rate_limited_says_the_limit_and_when() -> None:
    clock = Clock()
    quotas = TokenQuotas(reserve_max_tokens=256, clock=clock)
    caller = Principal(tokens_per_minute=120)
    quotas.reserve(caller, prompt_tokens=20, max_tokens=80, prompt_param="messages")
    with pytest.raises(RateLimited) as caught:
        quotas.reserve(caller, prompt_tokens=20, max_tokens=80, prompt_param="messages")
    assert caught.value.retry_after_s == pytest.approx(40.0)  # 80 short at 2 tokens/s
    assert "tokens per minute limit of 120" in caught.value.message


# -- through the gateway, with a fake replica ---------------------------------------------------


def counting_replica(prompt_tokens: int, completion_tokens: int) -> Starlette:
    """A replica that answers every generate with the same counts."""

    async def generate(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield event({"prompt_tokens": prompt_tokens})
            for _ in range(completion_tokens):
                yield event({"text": "x", "tokens": 1})
            yield event(
                {
                    "finish_reason": "stop",
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                }
            )

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[StarletteRoute("/models/mv_1/generate", generate, methods=["POST"])])


def embedding_replica(tokens_per_text: int) -> Starlette:
    """A replica that embeds each text as [1, 0] counting `tokens_per_text` tokens."""

    async def predict(request: Request) -> JSONResponse:
        items = (await request.json())["images"]
        data = [
            {"index": i, "name": it["name"], "embedding": [1.0, 0.0], "tokens": tokens_per_text}
            for i, it in enumerate(items)
        ]
        return JSONResponse({"data": data}, headers={"x-modelfab-items": str(len(data))})

    return Starlette(routes=[StarletteRoute("/models/mv_1/predict", predict, methods=["POST"])])


def gateway_app(url: str, caller: Principal) -> tuple[Gateway, FastAPI]:
    route = Route(
        "ep_1", "t_1", "assistant", "mv_1", 8, 5.0, replicas=(ReplicaRoute("job_a", url, None),)
    )
    gateway = Gateway(
        load_routes=lambda: {("t_1", "assistant"): route},
        authenticate=lambda token: caller,
        resolve_model=lambda tenant, ref: ref,
        journal=None,
        settings=GatewaySettings(auth_ttl_s=60),
    )
    app = FastAPI()
    api_errors.install(app)

    @app.post("/v1/chat/completions")
    async def call(request: Request) -> Response:
        return await chat_completions(gateway, request)

    @app.post("/v1/embeddings")
    async def embed(request: Request) -> EmbeddingList:
        return await gateway.embeddings(request)

    return gateway, app


def post_chats(
    app: FastAPI,
    gateway: Gateway,
    bodies: list[dict[str, Any]],
    path: str = "/v1/chat/completions",
) -> list[httpx.Response]:
    """POST each body in turn, then close the gateway."""

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                return [
                    await client.post(path, json=b, headers={"Authorization": "Bearer k"})
                    for b in bodies
                ]
        finally:
            await gateway.aclose()

    return asyncio.run(main())


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "assistant", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_the_gateway_settles_to_the_metered_tokens_and_answers_429_with_retry_after() -> None:
    server = ReplicaServer(counting_replica(prompt_tokens=9, completion_tokens=3))
    url = server.start()
    gateway, app = gateway_app(url, Principal(tokens_per_minute=60))
    try:
        first, second, third = post_chats(
            app,
            gateway,
            [chat(max_tokens=40), chat(max_tokens=40, stream=True), chat(max_tokens=50)],
        )
    finally:
        server.stop(drain_s=1)
    # each answer used 12 of the 45 it reserved (prompt ~5 + 40): 60 - 12 - 12 (+ a refill)
    assert first.status_code == 200, first.text
    assert first.json()["usage"]["total_tokens"] == 12
    assert second.status_code == 200 and "[DONE]" in second.text
    assert 36 <= gateway.tokens.buckets.available("k_1", 60) < 37
    assert third.status_code == 429, third.text
    assert third.headers["retry-after"] in {"19", "20"}  # 55 - ~36 short at 1 token/s
    error = third.json()["error"]
    assert error["code"] == "rate_limited" and "tokens per minute limit of 60" in error["message"]


def test_the_gateway_refuses_a_tenant_whose_budget_is_used_and_a_request_that_never_fits() -> None:
    server = ReplicaServer(counting_replica(prompt_tokens=9, completion_tokens=3))
    url = server.start()
    gateway, app = gateway_app(
        url, Principal(tokens_per_minute=1000, tokens_budget=100, tokens_used=90)
    )
    try:
        answers = post_chats(
            app, gateway, [chat(max_tokens=5000), chat(max_tokens=5), chat(max_tokens=5)]
        )
    finally:
        server.stop(drain_s=1)
    too_large, ok, spent = answers
    assert too_large.status_code == 400
    assert too_large.json()["error"]["param"] == "max_tokens"
    assert ok.status_code == 200, ok.text  # 90 + 12 = 102: the budget is now used
    assert spent.status_code == 429
    assert spent.json()["error"]["code"] == "token_budget_exhausted"
    assert json.loads(spent.text)["error"]["message"].startswith("this tenant has used 102")


def test_embeddings_reserve_an_estimate_and_settle_to_the_counted_tokens() -> None:
    server = ReplicaServer(embedding_replica(tokens_per_text=20))
    url = server.start()
    gateway, app = gateway_app(url, Principal(tokens_per_minute=60))
    ask = {"model": "assistant", "input": ["hello", "world"]}  # estimated 2 * (2 + 4)
    try:
        first, second, third = post_chats(app, gateway, [ask] * 3, path="/v1/embeddings")
    finally:
        server.stop(drain_s=1)
    assert first.status_code == 200, first.text
    assert first.json()["usage"]["prompt_tokens"] == 40
    assert second.status_code == 200, second.text  # 60 - 40 = 20 covers the estimate of 12
    assert third.status_code == 429, third.text  # 20 - 40: in debt (+ a refill)
    assert -20 <= gateway.tokens.buckets.available("k_1", 60) < -19
