"""The gateway: `POST /v1/endpoints/{name}/predict` and OpenAI's `POST /v1/embeddings` in
the control plane.

Per request: authenticate the key (cached), apply the key's rate limit, find the
caller's endpoint in an in-memory route table, forward the body over pooled keep-alive
connections to the ready replica with the fewest outstanding requests, and journal the
usage. Nothing on this path waits on the database except a cache miss: routes refresh in
the background and usage is written in batches by the journal.

The gateway imports nothing of `services` or `db`: the platform injects `load_routes`,
`authenticate` and `resolve_model`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from modelfab.errors import NotFound, PayloadTooLarge, UnsupportedMediaType
from modelfab.gateway import embeddings, usage
from modelfab.gateway.auth import TtlCache, parse_bearer
from modelfab.gateway.balancer import Balancer
from modelfab.gateway.errors import BadRequest, RateLimited, Unavailable
from modelfab.gateway.forwarding import Forwarder
from modelfab.gateway.limiter import RateLimiter
from modelfab.gateway.routes import Routes
from modelfab.gateway.token_limits import TokenQuotas, estimate_tokens
from modelfab.gateway.types import Caller, Forwarded, ReplicaRoute, Route, RouteTable, UsageSink
from modelfab.schemas.embeddings import EmbeddingCreate, EmbeddingList
from modelfab.settings import GatewaySettings

logger = logging.getLogger(__name__)

CONTENT_TYPES = ("multipart/form-data", "application/json")


class Gateway:
    def __init__(
        self,
        *,
        load_routes: Callable[[], RouteTable],
        authenticate: Callable[[str | None], Caller],
        resolve_model: Callable[[str, str], str],
        journal: UsageSink | None,
        max_body_bytes: int = 32 << 20,
        settings: GatewaySettings | None = None,
    ):
        """`authenticate(token)` raises Unauthenticated for a missing or bad key;
        `resolve_model(tenant id, ref)` returns a servable version id or raises NotFound."""
        s = settings if settings is not None else GatewaySettings()
        self.settings = s
        self._authenticate = authenticate
        self._resolve_model = resolve_model
        self.journal = journal
        self.max_body_bytes = max_body_bytes
        self.limiter = RateLimiter()
        self.tokens = TokenQuotas(reserve_max_tokens=s.reserve_max_tokens)
        self.balancer = Balancer(bench_s=s.bench_s)
        self.forwarder = Forwarder(
            self.balancer,
            max_tries=s.max_tries,
            timeout_s=s.forward_timeout_s,
            max_connections=s.max_connections,
        )
        self._routes = Routes(load_routes, ttl_s=s.routes_ttl_s)
        self._auth: TtlCache[str, Caller] = TtlCache(s.auth_ttl_s)
        self._auth_generation = 0  # bumped by forget_key: lookups begun before it are not kept
        self._versions: TtlCache[tuple[str, str], str] = TtlCache(s.auth_ttl_s)
        self._inflight: dict[str, int] = {}

    # -- the hot path -------------------------------------------------------------------------

    async def predict(self, request: Request, name: str) -> Response:
        """Forward one predict request; raises ModelfabError subclasses for the error
        handler (401, 404, 413, 415, 422, 429, 503, 504)."""
        principal = await self.admit(request)
        route = await self._route(principal.tenant_id, name)
        content_type = _content_type(request)
        version_id = await self._version(principal.tenant_id, route, request)
        body = await self._body(request)
        headers = {"content-type": content_type, **_batching(route)}
        answer, replica = await self._forward(
            route, version_id, body, headers, _replica_params(request)
        )
        usage.record(self.journal, principal.tenant_id, route.endpoint_id, answer)
        return Response(
            answer.content,
            status_code=answer.status,
            media_type=answer.content_type,
            headers={"x-modelfab-replica": replica.job_id, "x-modelfab-items": str(answer.items)},
        )

    async def embeddings(self, request: Request) -> EmbeddingList:
        """OpenAI's embeddings of the texts of the JSON body, by the caller's endpoint its
        `model` names; journals `requests=1, items, tokens_in` once per answered request,
        `tokens_in` being the `usage.prompt_tokens` answered. The key's tokens per minute
        reserve an estimate of the input's tokens, settled to the counted ones. Raises
        ModelfabError subclasses: 400 (a bad param, named; an input larger than the key's
        tokens per minute), 401, 404 (no such endpoint of the caller's), 413, 429 (also a
        token limit or budget), 503, 504."""
        principal = await self.admit(request)
        body = await self._body(request)
        ask = embeddings.parse_request(body)
        route = await self._route(principal.tenant_id, ask.model, param="model")
        require_task(route, ask.model, embeddings.TASK, "embeddings")
        texts = embeddings.inputs(ask)
        reservation = self.tokens.reserve(
            principal, prompt_tokens=estimate_tokens(texts), max_tokens=0, prompt_param="input"
        )
        try:
            out = await self._embed(route, ask, texts)
        except BaseException:
            self.tokens.settle(reservation, 0)  # refused or failed: nothing metered
            raise
        self.tokens.settle(reservation, out.usage.prompt_tokens)
        usage.record_tokens(
            self.journal,
            principal.tenant_id,
            route.endpoint_id,
            items=len(texts),
            tokens_in=out.usage.prompt_tokens,
        )
        return out

    async def _embed(self, route: Route, ask: EmbeddingCreate, texts: list[str]) -> EmbeddingList:
        """The replica's embeddings of `texts` in OpenAI's shape, or its refusal raised."""
        headers = {"content-type": "application/json", **_batching(route)}
        answer, _ = await self._forward(
            route, route.version_id, embeddings.replica_body(texts), headers, []
        )
        if not 200 <= answer.status < 300:
            raise embeddings.replica_error(answer)
        return embeddings.answer(ask, answer)

    async def admit(self, request: Request) -> Caller:
        """The caller, authenticated, within its key's rate limit. Raises Unauthenticated
        (401) or RateLimited (429, with when to retry)."""
        principal = await self._principal(request)
        wait_s = self.limiter.take(principal.key_id, principal.rate_limit_rps)
        if wait_s > 0:
            raise RateLimited(
                f"rate limit of {principal.rate_limit_rps:g} requests/s for this key reached; "
                f"retry after {wait_s:.2f}s or ask an admin to raise rate_limit_rps",
                retry_after_s=wait_s,
            )
        return principal

    async def route(self, tenant_id: str, name: str, *, param: str = "name") -> Route:
        """The tenant's endpoint `name` with a ready replica. Raises NotFound (naming `param`;
        also for another tenant's endpoint) or Unavailable (no ready replica yet)."""
        return await self._route(tenant_id, name, param=param)

    async def read_body(self, request: Request) -> bytes:
        """The request body, refused (413) past `max_body_bytes`."""
        return await self._body(request)

    def track(self, endpoint_id: str, delta: int) -> None:
        """Count a request of the endpoint in (+1) or out (-1) of flight: `drain` waits for
        them. Streams count until their last event was sent."""
        self._inflight[endpoint_id] = self._inflight.get(endpoint_id, 0) + delta

    async def _forward(
        self,
        route: Route,
        version_id: str,
        body: bytes,
        headers: dict[str, str],
        params: list[tuple[str, str]],
    ) -> tuple[Forwarded, ReplicaRoute]:
        """Forward to a replica of `route`, counted in flight for a drain."""
        self.track(route.endpoint_id, +1)
        try:
            return await self.forwarder.forward(
                route, f"/models/{version_id}/predict", body, headers, params
            )
        except Unavailable:
            self.invalidate()  # the table may list replicas that are gone
            raise
        finally:
            self.track(route.endpoint_id, -1)

    async def _principal(self, request: Request) -> Caller:
        token = parse_bearer(request.headers.get("authorization"))
        if token is None:
            return self._authenticate(None)  # raises, naming what to send
        cached = self._auth.get(token)
        if cached is not None:
            return cached
        generation = self._auth_generation
        principal = await run_in_threadpool(self._authenticate, token)
        self.tokens.loaded(principal)
        if generation == self._auth_generation:  # no revocation landed during the lookup
            self._auth.put(token, principal, ttl_s=_seconds_left(principal))
        return principal

    def forget_key(self, key_id: str) -> None:
        """Drop the cached principal of a revoked key, so its next request authenticates
        again (and is refused). Thread-safe; the key service calls it after the revoke
        committed. A lookup running meanwhile answers but is not cached."""
        self._auth_generation += 1
        self._auth.discard_where(lambda principal: principal.key_id == key_id)

    async def _route(self, tenant_id: str, name: str, *, param: str = "name") -> Route:
        route = (await self.routes()).get((tenant_id, name))
        if route is None:
            raise NotFound(
                f"no endpoint named {name!r}; list yours with `modelfab endpoints list`",
                param=param,
            )
        if not route.replicas:
            raise Unavailable(
                f"endpoint {name!r} has no ready replica yet; retry shortly "
                f"(`modelfab endpoints show {name}` shows its replicas)",
                retry_after_s=2.0,
                code="not_ready",
            )
        return route

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body is over {self.max_body_bytes >> 20} MiB; send fewer or smaller images",
            param="body",
        )

    async def _version(self, tenant_id: str, route: Route, request: Request) -> str:
        """The model version to run: the endpoint's, or `?model=REF`, another servable
        model of the tenant, which the replicas load next to it within their memory
        budget (a multi-model endpoint). Refs resolve through a cache of `auth_ttl_s`."""
        ref = request.query_params.get("model")
        if not ref:
            return route.version_id
        return await self.resolve_version(tenant_id, ref)

    async def resolve_version(self, tenant_id: str, ref: str) -> str:
        """The id of the tenant's servable model version `ref` (NAME, NAME:VERSION or
        NAME@ALIAS), through a cache of `auth_ttl_s`. Raises what the injected resolver
        raises: NotFound or InvalidRequest naming the ref."""
        cached = self._versions.get((tenant_id, ref))
        if cached is not None:
            return cached
        version_id = await run_in_threadpool(self._resolve_model, tenant_id, ref)
        self._versions.put((tenant_id, ref), version_id)
        return version_id

    async def serving(self, tenant_id: str, version_id: str, task: str) -> Route | None:
        """A ready endpoint of the tenant whose model is `version_id` (of `task`), the one
        with the most ready replicas; None when no endpoint serves it."""
        routes = [
            r
            for (tenant, _), r in (await self.routes()).items()
            if tenant == tenant_id and r.version_id == version_id and r.replicas
            and r.task in (task, None)
        ]  # fmt: skip
        return max(routes, key=lambda r: len(r.replicas), default=None)

    # -- routes -------------------------------------------------------------------------------

    async def routes(self) -> RouteTable:
        """The route table (see `Routes.get`)."""
        return await self._routes.get()

    def invalidate(self) -> None:
        """Make the next request load the routes (after an endpoint changed). Thread-safe."""
        self._routes.invalidate()

    # -- delete ---------------------------------------------------------------------------

    async def drain(self, endpoint_id: str, timeout_s: float) -> int:
        """Wait until no request of the endpoint is in flight here, or `timeout_s` passed.
        Returns how many were still in flight when draining began."""
        self.invalidate()
        started = self._inflight.get(endpoint_id, 0)
        deadline = time.monotonic() + timeout_s
        while self._inflight.get(endpoint_id, 0) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return started

    async def aclose(self) -> None:
        await self.forwarder.aclose()


def _seconds_left(principal: Caller) -> float | None:
    """How long the principal's key stays valid (None: no expiry): a cache entry must not
    outlive it."""
    if principal.expires_at is None:
        return None
    return principal.expires_at - time.time()


def require_task(route: Route, model: str, task: str, what: str) -> None:
    """Refuses (400 `model_not_supported`, param "model") an endpoint `model` whose model
    is not of `task`: OpenAI's routes each answer for one task's endpoints."""
    if route.task is not None and route.task != task:
        raise BadRequest(
            f"endpoint {model!r} serves a {route.task} model, not {what}; pass an endpoint "
            f"of a {task} model",
            param="model",
            code="model_not_supported",
        )


def _batching(route: Route) -> dict[str, str]:
    """The endpoint's batching settings, as the replica reads them."""
    return {
        "x-modelfab-max-batch-size": str(route.max_batch_size),
        "x-modelfab-max-wait-ms": str(route.max_wait_ms),
    }


def _content_type(request: Request) -> str:
    value = request.headers.get("content-type", "")
    if value.split(";")[0].strip().lower() not in CONTENT_TYPES:
        raise UnsupportedMediaType(
            f"content type {value or 'none'!r} is not accepted; send multipart/form-data "
            "with image files, or application/json with base64 images",
            param="content-type",
        )
    return value


def _replica_params(request: Request) -> list[tuple[str, str]]:
    """The query the replica understands (`top_k`); `model` was the gateway's."""
    return [(k, v) for k, v in request.query_params.multi_items() if k != "model"]
