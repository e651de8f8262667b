"""The gateway: `POST /v1/endpoints/{name}/predict` in the control plane.

Per request: authenticate the key (cached), apply the key's rate limit, find the
caller's endpoint in an in-memory route table, forward the body over pooled keep-alive
connections to the ready replica with the fewest outstanding requests, and journal the
usage. Nothing on this path waits on the database except a cache miss: routes refresh in
the background and usage is written in batches by the `UsageJournal`.

A replica that refuses the connection or drops it is benched for `BENCH_S` and the request
is retried on another (predictions are idempotent), at most `MAX_TRIES` times.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from modelfab.errors import (
    ModelfabError,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    Unauthenticated,
)
from modelfab.services.common import Principal
from modelfab.services.endpoints import DELETING, EndpointService, ReplicaRoute, Route
from modelfab.serving.inputs import UnsupportedMediaType
from modelfab.usage_journal import UsageJournal

logger = logging.getLogger(__name__)

ROUTES_TTL_S = 0.5
AUTH_TTL_S = 10.0
BENCH_S = 2.0
MAX_TRIES = 3
FORWARD_TIMEOUT_S = 120.0
CONTENT_TYPES = ("multipart/form-data", "application/json")


class Unavailable(ModelfabError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class GatewayTimeout(ModelfabError):
    status = 504
    code = "replica_timeout"


@dataclass(frozen=True)
class Forwarded:
    """A replica's answer, read whole."""

    status: int
    content: bytes
    content_type: str
    items: int


class RateLimited(QuotaExceeded):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per key: `rate` requests per second, bursts of up to max(1, rate)."""

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


class Balancer:
    """Least outstanding requests over an endpoint's replicas; benched replicas are skipped."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.outstanding: dict[str, int] = {}
        self._benched_until: dict[str, float] = {}

    def pick(self, replicas: tuple[ReplicaRoute, ...], exclude: set[str]) -> ReplicaRoute | None:
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
        self._benched_until[job_id] = self.clock() + BENCH_S


class Gateway:
    def __init__(
        self,
        *,
        load_routes: Callable[[], dict[tuple[str, str], Route]],
        authenticate: Callable[[str | None], Principal],
        resolve_model: Callable[[str, str], str],
        journal: UsageJournal | None,
        max_body_bytes: int = 32 << 20,
    ):
        self._load_routes = load_routes
        self._authenticate = authenticate
        self._resolve_model = resolve_model  # (tenant id, ref) -> servable version id
        self._versions: dict[tuple[str, str], tuple[str, float]] = {}
        self.journal = journal
        self.max_body_bytes = max_body_bytes
        self.limiter = RateLimiter()
        self.balancer = Balancer()
        self._routes: dict[tuple[str, str], Route] | None = None
        self._routes_at = 0.0
        self._refreshing: asyncio.Task[None] | None = None
        self._auth: dict[str, tuple[Principal, float]] = {}
        self._inflight: dict[str, int] = {}
        self._http: aiohttp.ClientSession | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None

    # -- the hot path -------------------------------------------------------------------------

    async def predict(self, request: Request, name: str) -> Response:
        """Forward one predict request; raises ModelfabError subclasses for the error
        handler (401, 404, 413, 415, 422, 429, 503)."""
        principal = await self._principal(request)
        wait_s = self.limiter.take(principal.key_id, principal.rate_limit_rps)
        if wait_s > 0:
            raise RateLimited(
                f"rate limit of {principal.rate_limit_rps:g} requests/s for this key reached; "
                f"retry after {wait_s:.2f}s or ask an admin to raise rate_limit_rps",
                retry_after_s=wait_s,
            )
        route = await self._route(principal.tenant_id, name)
        content_type = _content_type(request)
        version_id = await self._version(principal.tenant_id, route, request)
        body = await self._body(request)
        self._inflight[route.endpoint_id] = self._inflight.get(route.endpoint_id, 0) + 1
        try:
            resp, replica = await self._forward(route, version_id, request, content_type, body)
        finally:
            self._inflight[route.endpoint_id] -= 1
        if resp.status < 300 and self.journal is not None:
            self.journal.add(
                principal.tenant_id, "endpoint", route.endpoint_id, requests=1, items=resp.items
            )
        return Response(
            resp.content,
            status_code=resp.status,
            media_type=resp.content_type,
            headers={"x-modelfab-replica": replica.job_id, "x-modelfab-items": str(resp.items)},
        )

    async def _principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        token = None
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("Authorization header must be 'Bearer <key>'")
            token = token.strip()
        if token is None:
            return self._authenticate(None)  # raises, naming what to send
        cached = self._auth.get(token)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        principal = await run_in_threadpool(self._authenticate, token)
        if len(self._auth) > 10_000:
            self._auth.clear()
        self._auth[token] = (principal, time.monotonic() + AUTH_TTL_S)
        return principal

    async def _route(self, tenant_id: str, name: str) -> Route:
        routes = await self.routes()
        route = routes.get((tenant_id, name))
        if route is None or route.status == DELETING:
            raise NotFound(
                f"no endpoint named {name!r}; list yours with `modelfab endpoints list`",
                param="name",
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
        budget (a multi-model endpoint). Refs resolve through a 10 s cache."""
        ref = request.query_params.get("model")
        if not ref:
            return route.version_id
        cached = self._versions.get((tenant_id, ref))
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        version_id = await run_in_threadpool(self._resolve_model, tenant_id, ref)
        if len(self._versions) > 10_000:
            self._versions.clear()
        self._versions[(tenant_id, ref)] = (version_id, time.monotonic() + AUTH_TTL_S)
        return version_id

    async def _forward(
        self, route: Route, version_id: str, request: Request, content_type: str, body: bytes
    ) -> tuple[Forwarded, ReplicaRoute]:
        headers = {
            "content-type": content_type,
            "x-modelfab-max-batch-size": str(route.max_batch_size),
            "x-modelfab-max-wait-ms": str(route.max_wait_ms),
        }
        path = f"/models/{version_id}/predict"
        tried: set[str] = set()
        for _ in range(MAX_TRIES):
            replica = self.balancer.pick(route.replicas, tried)
            if replica is None:
                break
            tried.add(replica.job_id)
            out = self.balancer.outstanding
            out[replica.job_id] = out.get(replica.job_id, 0) + 1
            try:
                resp = await self._post(replica.url + path, body, headers, request)
            except aiohttp.ClientConnectionError as exc:
                logger.warning("replica %s failed (%r); trying another", replica.job_id, exc)
                self.balancer.bench(replica.job_id)
                continue
            finally:
                out[replica.job_id] -= 1
            if resp.status == 503:  # the replica is draining: another one answers
                continue
            return resp, replica
        self.invalidate()
        raise Unavailable(
            f"no replica of endpoint {route.name!r} answered; retry shortly", retry_after_s=1.0
        )

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str], request: Request
    ) -> Forwarded:
        """One POST to a replica. Raises aiohttp.ClientConnectionError when the replica
        refuses or drops the connection; a timeout answers 504 (not retried: the replica
        may still be working on it)."""
        try:
            async with self._client().post(
                url, data=body, headers=headers, params=_replica_params(request)
            ) as resp:
                return Forwarded(
                    status=resp.status,
                    content=await resp.read(),
                    content_type=resp.headers.get("content-type", "application/json"),
                    items=int(resp.headers.get("x-modelfab-items", "0") or 0),
                )
        except TimeoutError as exc:
            raise GatewayTimeout(
                f"the replica did not answer within {FORWARD_TIMEOUT_S:g}s; send fewer images"
            ) from exc

    def _client(self) -> aiohttp.ClientSession:
        """aiohttp, not httpx, on this path: about 0.13 CPU-ms per forwarded request
        against httpx's 2.4 (measured on loopback, 32 concurrent)."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._http_loop is not loop or self._http.closed:
            connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=30)
            timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)
            self._http = aiohttp.ClientSession(connector=connector, timeout=timeout)
            self._http_loop = loop
        return self._http

    # -- routes -------------------------------------------------------------------------------

    async def routes(self) -> dict[tuple[str, str], Route]:
        """The route table; a stale one is refreshed in the background, a missing or
        invalidated one is loaded before answering."""
        if self._routes is None:
            await self._refresh()
        elif time.monotonic() - self._routes_at > ROUTES_TTL_S and self._refreshing is None:
            self._refreshing = asyncio.create_task(self._refresh())
        assert self._routes is not None
        return self._routes

    def invalidate(self) -> None:
        """Make the next request load the routes (after an endpoint changed). Thread-safe."""
        self._routes = None

    async def _refresh(self) -> None:
        try:
            self._routes = await run_in_threadpool(self._load_routes)
            self._routes_at = time.monotonic()
        finally:
            self._refreshing = None

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
        if self._http is not None:
            await self._http.close()


def _content_type(request: Request) -> str:
    value = request.headers.get("content-type", "")
    if value.split(";")[0].strip().lower() not in CONTENT_TYPES:
        raise UnsupportedMediaType(
            f"content type {value or 'none'!r} is not accepted; send multipart/form-data "
            "with image files, or application/json with base64 images",
            param="content-type",
        )
    return value


class Serving:
    """The control plane's serving side as the API sees it: the gateway, and deleting an
    endpoint (which must drain the gateway's in-flight requests first)."""

    def __init__(
        self, endpoints: EndpointService, gateway: Gateway, *, drain_timeout_s: float = 30.0
    ):
        self.endpoints = endpoints
        self.gateway = gateway
        self.drain_timeout_s = drain_timeout_s

    async def delete(self, principal: Principal, name: str) -> dict[str, Any]:
        """Stop routing to `name`, wait up to `drain_timeout_s` for its in-flight requests,
        then stop its replicas. Raises NotFound for an endpoint not the caller's."""
        endpoint_id = await run_in_threadpool(self.endpoints.start_delete, principal, name)
        in_flight = await self.gateway.drain(endpoint_id, self.drain_timeout_s)
        await run_in_threadpool(self.endpoints.finish_delete, endpoint_id)
        self.gateway.invalidate()
        return {"object": "endpoint", "name": name, "deleted": True, "drained": in_flight}


def _replica_params(request: Request) -> list[tuple[str, str]]:
    """The query the replica understands (`top_k`); `model` was the gateway's."""
    return [(k, v) for k, v in request.query_params.multi_items() if k != "model"]
