"""The replica's HTTP face: a Starlette app over a `ModelCache`, and `ReplicaServer`, which
runs it with uvicorn in a background thread.

A predict request flows: read the body (size-limited) -> split it into files -> get the
model (loading it in a thread on first use) -> decode (images, unless the kind
`DecodesInput`) and `prepare` every item in the thread pool -> the model's
`DynamicBatcher`, which runs `infer` on batches in its own thread -> `result` per item
(inline, or in the pool for `SlowResults` kinds). The event loop only parses and routes,
so decoding, preprocessing and inference of different requests overlap. The app knows
models only through `serving.protocol`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from modelfab import httpd
from modelfab.errors import InvalidRequest, ModelfabError
from modelfab.schemas.endpoints import ModelStats, ReplicaHealth
from modelfab.schemas.limits import (
    MAX_IMAGES_PER_REQUEST,
    REPLICA_SECRET_MAX_CHARS,
    REPLICA_SECRET_MIN_CHARS,
)
from modelfab.serving.batching import DynamicBatcher
from modelfab.serving.chat_routes import chat_routes
from modelfab.serving.inputs import (
    NamedBytes,
    check_content_length,
    decode_image,
    parse_images,
    read_body,
)
from modelfab.serving.models import ModelCache
from modelfab.serving.protocol import (
    ChecksOptions,
    DecodesInput,
    HasAnswerFields,
    ReportsStats,
    ServedModel,
    SlowResults,
    Warmable,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
Endpoint = Callable[[Request], Any]

MAX_BATCH_SIZE_HEADER = "x-modelfab-max-batch-size"
MAX_WAIT_MS_HEADER = "x-modelfab-max-wait-ms"
ITEMS_HEADER = "x-modelfab-items"
PARSE_INLINE_BYTES = 256 * 1024
"""Bodies up to this size are split into files on the event loop (faster than a thread
hop); larger ones in the thread pool."""
MAX_WAIT_MS_LIMIT = 1000.0
"""The longest batching wait a request may ask for, in milliseconds."""


@dataclass(frozen=True)
class ReplicaLimits:
    """What one replica accepts and how it batches when a request does not say."""

    max_images: int = MAX_IMAGES_PER_REQUEST
    """Images per request."""
    max_body_bytes: int = 32 * 1024 * 1024
    """Request body size."""
    default_max_batch_size: int = 8
    """Batch size when the request has no x-modelfab-max-batch-size header."""
    default_max_wait_ms: float = 5.0
    """Batching wait when the request has no x-modelfab-max-wait-ms header."""


class Replica:
    """The state behind the app: the cache, one batcher per model, a preprocessing pool,
    and the number of predict requests in flight. Its async methods must all run on one
    event loop (the batchers bind to the loop that first uses them)."""

    def __init__(self, cache: ModelCache, limits: ReplicaLimits, workers: int | None = None):
        self.cache = cache
        self.limits = limits
        self.outstanding = 0
        self.preparing = 0  # images being decoded: they will join a batcher soon
        self.pool = ThreadPoolExecutor(
            max_workers=workers or os.cpu_count() or 2, thread_name_prefix="preprocess"
        )
        self._batchers: dict[str, DynamicBatcher[Any, Any]] = {}

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the preprocessing pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def parse(self, content_type: str | None, body: bytes) -> list[NamedBytes]:
        """The body's files (see `parse_images`); a large body is parsed in the pool, as
        that takes ~3 ms per MB (multipart) to ~10 ms per MB (JSON) of event-loop time."""
        if len(body) <= PARSE_INLINE_BYTES:
            return parse_images(content_type, body, max_images=self.limits.max_images)
        return await self.in_thread(
            partial(parse_images, max_images=self.limits.max_images), content_type, body
        )

    async def model(self, version_id: str) -> ServedModel:
        """The model, loaded in a thread when needed (loader errors pass through)."""
        model = self.cache.peek(version_id)  # the common case: no thread hop
        return model if model is not None else await self.in_thread(self.cache.get, version_id)

    async def hold(self, version_id: str) -> tuple[ServedModel, Callable[[], None]]:
        """The model, pinned in the cache until the returned release is called: a stream
        holds its model for its whole life, so no load evicts (and closes) it meanwhile."""
        lease = self.cache.lease(version_id)
        model = await self.in_thread(lease.__enter__)

        def release() -> None:
            lease.__exit__(None, None, None)

        return model, release

    async def prepare(self, model: ServedModel, files: Sequence[NamedBytes]) -> list[Any]:
        """Decode and prepare every file in the pool, in parallel: what `model.prepare`
        returns for each. Raises the first file's error (in request order) when any fails."""
        self.preparing += len(files)
        try:
            results = await asyncio.gather(
                *(self.in_thread(_prepare, model, name, data) for name, data in files),
                return_exceptions=True,
            )
        finally:
            self.preparing -= len(files)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # no exceptions left

    async def results(
        self, model: ServedModel, raws: Sequence[Any], options: dict[str, str]
    ) -> list[dict[str, Any]]:
        """`model.result` of every item: in the pool, in parallel, for `SlowResults` kinds
        (a detector stitches maps and encodes PNGs); inline otherwise, as they are cheap."""
        if not (isinstance(model, SlowResults) and model.slow_results):
            return [model.result(raw, options) for raw in raws]
        return list(
            await asyncio.gather(*(self.in_thread(model.result, raw, options) for raw in raws))
        )

    def batcher(self, version_id: str) -> DynamicBatcher[Any, Any]:
        """The model's batcher, started on first use."""
        batcher = self._batchers.get(version_id)
        if batcher is None:
            batcher = DynamicBatcher(
                lambda items: self._run_batch(version_id, items),
                max_batch_size=self.limits.default_max_batch_size,
                max_wait_s=self.limits.default_max_wait_ms / 1000,
                # Images being decoded will join the queue: wait for them (up to max_wait),
                # but never for nobody.
                incoming=lambda: self.preparing,
            )
            batcher.start()
            self._batchers[version_id] = batcher
        return batcher

    def stats(self, version_id: str, model: ServedModel) -> ModelStats:
        """The model's own figures (`ReportsStats`), else its batcher's queue. Never
        blocks (the event loop answers the probe with it)."""
        if isinstance(model, ReportsStats):
            return model.stats()
        batcher = self._batchers.get(version_id)
        return ModelStats(
            version_id=version_id,
            queue_depth=batcher.queued if batcher is not None else 0,
            running=batcher.in_flight if batcher is not None else 0,
        )

    def _run_batch(self, version_id: str, items: list[Any]) -> list[Any]:
        """The model's raw output per prepared item (`infer`); the model stays leased (not
        evictable) while it runs. Blocks."""
        with self.cache.lease(version_id) as model:
            return model.infer(items)

    async def close(self) -> None:
        """Drain every batcher, then stop the pool."""
        await asyncio.gather(*(b.stop() for b in self._batchers.values()))
        self.pool.shutdown(wait=False)
        await asyncio.to_thread(self.cache.close)


def _prepare(model: ServedModel, name: str, data: bytes) -> Any:
    """One file's bytes through the kind's decoding (images by default) and `prepare`."""
    decoded = (
        model.decode(name, data) if isinstance(model, DecodesInput) else decode_image(name, data)
    )
    return model.prepare(decoded)


class RequireSecret:
    """ASGI middleware: an HTTP request that does not carry `Authorization: Bearer
    <secret>` is answered 401 before anything else runs (no route, no body read), so only
    the platform (the gateway, the endpoint controller) reaches the replica."""

    def __init__(self, app: ASGIApp, *, secret: str) -> None:
        _check_secret(secret)
        self.app = app
        self._secret = secret.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._presented(scope):
            refused = _error(
                401,
                "unauthenticated",
                "a replica answers only the modelfab gateway; send requests to "
                "/v1/endpoints/{name}/predict on the control plane",
            )
            refused.headers["www-authenticate"] = "Bearer"
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _presented(self, scope: Scope) -> bool:
        """The request's bearer token is the secret (compared in constant time)."""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    token.strip(), self._secret
                )
        return False


def _check_secret(secret: str) -> None:
    if not REPLICA_SECRET_MIN_CHARS <= len(secret) <= REPLICA_SECRET_MAX_CHARS:
        raise ValueError(
            f"a replica secret has {REPLICA_SECRET_MIN_CHARS} to "
            f"{REPLICA_SECRET_MAX_CHARS} characters"
        )


def create_replica_app(
    cache: ModelCache,
    *,
    secret: str,
    max_images: int = MAX_IMAGES_PER_REQUEST,
    max_body_bytes: int = 32 * 1024 * 1024,
    default_max_batch_size: int = 8,
    default_max_wait_ms: float = 5.0,
    workers: int | None = None,
) -> Starlette:
    """The replica's ASGI app over `cache`, answering only requests that present `secret`
    as a bearer token (`RequireSecret`; raises ValueError for a secret of the wrong
    length). `workers` sizes the decoding/preprocessing thread pool (default: one per
    CPU). Shutting the app down (ASGI lifespan) drains the batchers."""
    _check_secret(secret)  # now, not at the first request (Starlette builds middleware late)
    limits = ReplicaLimits(max_images, max_body_bytes, default_max_batch_size, default_max_wait_ms)
    replica = Replica(cache, limits, workers)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await replica.close()

    routes = [
        Route("/health", _endpoint(lambda r: _health(replica, r)), methods=["GET"]),
        Route(
            "/models/{version_id}/load",
            _endpoint(lambda r: _load(replica, r)),
            methods=["POST"],
        ),
        Route(
            "/models/{version_id}/predict",
            _endpoint(lambda r: _predict(replica, r)),
            methods=["POST"],
        ),
        *chat_routes(replica, _endpoint),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(RequireSecret, secret=secret)],
        exception_handlers={HTTPException: _http_error},
    )


def _endpoint(handler: Endpoint) -> Callable[[Request], Any]:
    """Wrap a handler so ModelfabErrors become their JSON error and status, and anything
    unexpected is logged with its traceback and answered with a generic 500."""

    async def endpoint(request: Request) -> Response:
        try:
            response: Response = await handler(request)
            return response
        except ModelfabError as exc:
            return JSONResponse(exc.to_dict(), status_code=exc.status)
        except Exception:
            logger.exception("unexpected error on %s %s", request.method, request.url.path)
            return _error(500, "internal_error", "internal error; the replica log has details")

    return endpoint


def _error(status: int, code: str, message: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "param": param}}
    return JSONResponse(body, status_code=status)


async def _http_error(_: Request, exc: Exception) -> Response:
    """The framework's own errors as JSON, with their headers: a 405's `Allow` (sorted;
    each path here is one route, so the framework's list is the whole answer)."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    response = _error(exc.status_code, code, str(exc.detail))
    response.headers.update(exc.headers or {})
    if allow := response.headers.get("allow"):
        response.headers["allow"] = ", ".join(sorted(m.strip() for m in allow.split(",")))
    return response


async def _health(replica: Replica, _: Request) -> Response:
    """The controller's probe: alive, and what each loaded model is doing (`ReplicaHealth`)."""
    models = replica.cache.models()
    health = ReplicaHealth(
        status="ok",
        models=[version_id for version_id, _ in models],
        outstanding=replica.outstanding,
        stats=[replica.stats(version_id, model) for version_id, model in models],
    )
    return JSONResponse(health.model_dump(mode="json"))


async def _load(replica: Replica, request: Request) -> Response:
    """Load and warm the model (one dummy inference, for `Warmable` kinds) so its first
    request is fast."""
    version_id = request.path_params["version_id"]
    started = time.perf_counter()
    model = await replica.model(version_id)
    if isinstance(model, Warmable):
        await replica.in_thread(model.warm)
    load_ms = (time.perf_counter() - started) * 1000
    return JSONResponse({"version_id": version_id, "loaded": True, "load_ms": round(load_ms, 3)})


async def _predict(replica: Replica, request: Request) -> Response:
    """The model's answer for every image of the body. Checks the cheap things (headers,
    size, body shape, the model's query options) before decoding anything."""
    version_id = request.path_params["version_id"]
    limits = replica.limits
    options = dict(request.query_params)
    replica.outstanding += 1
    try:
        max_batch_size, max_wait_s = _batching_headers(request, limits)
        check_content_length(
            request.headers.get("content-length"), max_body_bytes=limits.max_body_bytes
        )
        body = await read_body(request.stream(), max_body_bytes=limits.max_body_bytes)
        files = await replica.parse(request.headers.get("content-type"), body)
        model = await replica.model(version_id)
        if isinstance(model, ChecksOptions):
            model.check_options(options)
        items = await replica.prepare(model, files)
        raws = await replica.batcher(version_id).submit(
            items,
            max_batch_size=min(max_batch_size, model.max_batch_size),
            max_wait_s=max_wait_s,
        )
        results = await replica.results(model, raws, options)
    finally:
        replica.outstanding -= 1
    return _answer(model, files, results, options)


def _answer(
    model: ServedModel,
    files: Sequence[NamedBytes],
    results: Sequence[dict[str, Any]],
    options: dict[str, str],
) -> Response:
    """The list answer: the model's task (and its `HasAnswerFields`, e.g. a detector's
    threshold), one entry per item."""
    body: dict[str, Any] = {
        "object": "list",
        "model_version": model.version_id,
        "task": model.task,
    }
    if isinstance(model, HasAnswerFields):
        body.update(model.answer_fields(options))
    body["data"] = [
        {"index": i, "name": name, **result}
        for i, ((name, _), result) in enumerate(zip(files, results, strict=True))
    ]
    body["usage"] = {"items": len(files)}
    return JSONResponse(body, headers={ITEMS_HEADER: str(len(files))})


def _batching_headers(request: Request, limits: ReplicaLimits) -> tuple[int, float]:
    """(max_batch_size, max_wait_s) from the request's headers or the replica defaults."""
    size = _int_param(
        request.headers.get(MAX_BATCH_SIZE_HEADER),
        MAX_BATCH_SIZE_HEADER,
        default=limits.default_max_batch_size,
    )
    raw = request.headers.get(MAX_WAIT_MS_HEADER)
    wait_ms = limits.default_max_wait_ms
    if raw is not None:
        try:
            wait_ms = float(raw)
        except ValueError:
            wait_ms = -1.0
        if not 0 <= wait_ms <= MAX_WAIT_MS_LIMIT:  # also refuses nan
            raise _bad_param(
                MAX_WAIT_MS_HEADER, f"a number of milliseconds in [0, {MAX_WAIT_MS_LIMIT:g}]"
            )
    return size, wait_ms / 1000


def _int_param(raw: str | None, param: str, *, default: int) -> int:
    """A positive integer from a query parameter or header; `default` when absent."""
    if raw is None:
        return default
    if not raw.strip().isdigit() or int(raw) < 1:
        raise _bad_param(param, "a positive integer")
    return int(raw)


def _bad_param(param: str, expected: str) -> InvalidRequest:
    return InvalidRequest(f"{param} must be {expected}", param=param)


class ReplicaServer:
    """Serves an ASGI app with uvicorn (HTTP/1.1 keep-alive) in a background thread."""

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, *, keep_alive_s: float = 30.0
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.keep_alive_s = keep_alive_s
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 30.0) -> str:
        """Bind (port 0 picks a free port), serve, and return the base URL once serving.
        Raises OSError when the address is taken, RuntimeError when serving fails."""
        sock = httpd.bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = httpd.make_server(self.app, keep_alive_s=self.keep_alive_s)
        self._thread = httpd.serve_in_thread(
            self._server, sock, name="replica-http", timeout_s=timeout_s
        )
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        return self.url

    def stop(self, drain_s: float = 10.0) -> None:
        """Stop accepting connections, let in-flight requests finish for up to `drain_s`
        seconds (then cancel them), drain the batchers, and return once stopped."""
        if self._server is None or self._thread is None:
            return
        # Typed int, but uvicorn passes it straight to asyncio.wait_for: seconds as a float.
        self._server.config.timeout_graceful_shutdown = max(drain_s, 0.001)  # type: ignore[assignment]
        self._server.should_exit = True
        self._thread.join(drain_s + 10)
        if self._thread.is_alive():
            logger.warning("the replica server on %s did not stop within %.0f s", self.url, drain_s)
        self._server = self._thread = None
