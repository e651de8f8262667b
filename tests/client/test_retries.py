"""The SDK retries a create whose connection failed with the same `Idempotency-Key`, so
the server does the work once even when it was the answer that got lost."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.client import Client, Unreachable
from modelfab.db.models import Job
from tests.conftest import Api


class LosesAnswers(httpx.BaseTransport):
    """Forwards to the in-process app, then drops the first `lose` POST answers as if the
    connection broke after the server answered (httpx.ReadError)."""

    def __init__(self, inner: httpx.BaseTransport, lose: int = 1):
        self.inner = inner
        self.lose = lose
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        body = response.read()  # the server's work is done once this returns
        if request.method == "POST":
            self.keys.append(request.headers.get("Idempotency-Key"))
            if len(self.keys) <= self.lose:
                raise httpx.ReadError("connection reset by peer", request=request)
        return httpx.Response(response.status_code, headers=response.headers, content=body)


def jobs_stored(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def sdk(api: Api, transport: httpx.BaseTransport, **options: float) -> Client:
    key = api.create_tenant()["api_key"]
    return Client("http://testserver", key, transport=transport, retry_backoff_s=0, **options)


def test_a_create_whose_answer_was_lost_is_retried_and_done_once(
    api: Api, factory: sessionmaker[Session]
) -> None:
    transport = LosesAnswers(api.client._transport)
    with sdk(api, transport) as client:
        job = client.create_job("sleep", params={"seconds": 1})
        assert [j.id for j in client.list_jobs()] == [job.id]
    assert jobs_stored(factory) == 1
    assert len(transport.keys) == 2 and transport.keys[0] == transport.keys[1]
    assert transport.keys[0]


def test_a_hub_import_whose_answer_was_lost_is_retried_and_done_once(
    api: Api, tmp_path: Path
) -> None:
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"weights" * 100)
    transport = LosesAnswers(api.client._transport)
    with Client("http://testserver", api.admin_key, transport=transport, retry_backoff_s=0) as c:
        out = c.hub_import("resnet18", weights)
    assert out.imported.size == weights.stat().st_size
    assert len(transport.keys) == 2 and transport.keys[0] == transport.keys[1]
    assert transport.keys[0]


def test_each_create_gets_a_fresh_key(api: Api) -> None:
    transport = LosesAnswers(api.client._transport, lose=0)
    with sdk(api, transport) as client:
        client.create_job("sleep")
        client.create_job("sleep")
    assert len(set(transport.keys)) == 2


def test_the_sdk_gives_up_after_its_retries(api: Api, factory: sessionmaker[Session]) -> None:
    transport = LosesAnswers(api.client._transport, lose=10)
    with sdk(api, transport, create_retries=2) as client, pytest.raises(Unreachable):
        client.create_job("sleep")
    assert len(transport.keys) == 3 and len(set(transport.keys)) == 1
    assert jobs_stored(factory) == 1


def test_the_back_off_doubles_up_to_its_cap(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr("modelfab.client.time.sleep", waits.append)
    transport = LosesAnswers(api.client._transport, lose=5)
    key = api.create_tenant()["api_key"]
    options = {"create_retries": 5, "retry_backoff_s": 0.5, "max_backoff_s": 3.0}
    with Client("http://testserver", key, transport=transport, **options) as client:
        client.create_job("sleep")
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0]
