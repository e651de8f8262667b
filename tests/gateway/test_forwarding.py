"""The forwarder presents each replica's own secret, and a replica that refuses it (another
process on a reused port, or a stale route) is benched and another one answers.

Real loopback servers (`ReplicaServer`) because what is tested is the header on the wire."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute

from modelfab.gateway import Balancer, Forwarded, ReplicaRoute, Route
from modelfab.gateway.forwarding import Forwarder
from modelfab.serving.replica_app import ReplicaServer


class Recorder:
    """A fake replica that answers 200 to `Bearer <secret>` and 401 to anything else,
    recording the Authorization header of every request."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.seen: list[str | None] = []

    def app(self) -> Starlette:
        async def predict(request: Request) -> JSONResponse:
            header = request.headers.get("authorization")
            self.seen.append(header)
            if header != f"Bearer {self.secret}":
                return JSONResponse({"error": {"code": "unauthenticated"}}, status_code=401)
            return JSONResponse({"ok": True})

        return Starlette(routes=[StarletteRoute("/predict", predict, methods=["POST"])])


@pytest.fixture
def replicas() -> Iterator[list[tuple[Recorder, str]]]:
    """Two fake replicas on loopback: (recorder, url) each."""
    servers: list[ReplicaServer] = []
    out: list[tuple[Recorder, str]] = []
    try:
        for secret in ("secret-of-a", "secret-of-b"):
            recorder = Recorder(secret)
            server = ReplicaServer(recorder.app())
            servers.append(server)
            out.append((recorder, server.start()))
        yield out
    finally:
        for server in servers:
            server.stop(drain_s=1)


def forward(route: Route) -> tuple[Forwarded, ReplicaRoute]:
    async def main() -> tuple[Forwarded, ReplicaRoute]:
        forwarder = Forwarder(Balancer(), max_tries=3, timeout_s=10)
        try:
            return await forwarder.forward(route, "/predict", b"{}", {}, [])
        finally:
            await forwarder.aclose()

    return asyncio.run(main())


def route_of(*replicas: ReplicaRoute) -> Route:
    return Route("ep_1", "t_1", "parts", "mv_1", 8, 5.0, replicas=replicas)


def test_the_gateway_presents_each_replicas_own_secret(
    replicas: list[tuple[Recorder, str]],
) -> None:
    (a, url_a), (b, _) = replicas
    answer, used = forward(route_of(ReplicaRoute("job_a", url_a, "secret-of-a")))
    assert answer.status == 200 and used.job_id == "job_a"
    assert a.seen == ["Bearer secret-of-a"] and b.seen == []


def test_a_replica_that_refuses_the_secret_is_skipped(
    replicas: list[tuple[Recorder, str]],
) -> None:
    """The route says job_a has b's secret (as if job_a's port now belonged to another
    replica): a's 401 never reaches the caller; b answers."""
    (a, url_a), (b, url_b) = replicas
    route = route_of(
        ReplicaRoute("job_a", url_a, "secret-of-b"), ReplicaRoute("job_b", url_b, "secret-of-b")
    )
    answer, used = forward(route)
    assert answer.status == 200 and used.job_id == "job_b"
    assert a.seen == ["Bearer secret-of-b"] and b.seen == ["Bearer secret-of-b"]


def test_a_route_never_shows_its_secret() -> None:
    assert "secret-of-a" not in repr(ReplicaRoute("job_a", "http://x", "secret-of-a"))
