"""The worker's HTTP client: what a replica passes on when the control plane refuses to
give it a model version's files, and what its announce sends."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from modelfab.compute.worker.api import AttemptOver, WorkerAPI
from modelfab.compute.worker.context import WorkerContext
from modelfab.errors import ModelfabError


def api_answering(status: int, body: dict[str, object], seen: list[httpx.Request]) -> WorkerAPI:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body)

    return WorkerAPI(
        "http://control", "tok", "job_1", retry_for_s=0, transport=httpx.MockTransport(handle)
    )


@pytest.mark.parametrize(
    ("status", "code", "param"),
    [
        (422, "invalid_request", "version_id"),
        (404, "not_found", "version_id"),
        (409, "artifact_corrupt", None),
    ],
)
def test_a_refused_model_fetch_carries_the_control_planes_error(
    status: int, code: str, param: str | None
) -> None:
    """A replica answers with this error (its `status` and `to_dict()`), not a 500."""
    error = {"code": code, "message": "no model version mv_9 here", "param": param}
    api = api_answering(status, {"error": error}, [])
    with pytest.raises(ModelfabError) as caught:
        api.model_files("mv_9")
    assert caught.value.status == status
    passed_on = caught.value.to_dict()["error"]
    assert {k: v for k, v in passed_on.items() if k != "type"} == error
    assert passed_on["type"] == "invalid_request_error"  # OpenAI's, for a 4xx


def test_an_unreadable_refusal_still_names_the_status() -> None:
    def handle(_: httpx.Request) -> httpx.Response:
        return httpx.Response(422, text="<html>bad</html>")

    api = WorkerAPI(
        "http://c", "tok", "job_1", retry_for_s=0, transport=httpx.MockTransport(handle)
    )
    with pytest.raises(ModelfabError) as caught:
        api.model_files("mv_9")
    assert caught.value.status == 422 and "422" in caught.value.message


def test_a_model_fetch_after_the_attempt_ended_stops_the_replica(tmp_path: Path) -> None:
    """401: the job token no longer holds. The request is answered 503 (the gateway tries
    another replica) and the replica's loop sees it is cancelled."""
    error = {"code": "unauthenticated", "message": "job token not valid", "param": None}
    api = api_answering(401, {"error": error}, [])
    with pytest.raises(AttemptOver):
        api.model_files("mv_9")
    ctx = WorkerContext(
        api, job_id="job_1", attempt=1, dataset=None, dataset_path=None, workdir=tmp_path
    )
    try:
        with pytest.raises(ModelfabError) as caught:
            ctx.model_files("mv_9")
        assert caught.value.status == 503 and ctx.cancelled()
    finally:
        ctx.attempt_over.set()  # nothing left to ship
        ctx.close()


def test_announce_sends_the_url_and_the_replica_secret() -> None:
    seen: list[httpx.Request] = []
    api = api_answering(
        200, {"object": "replica", "job_id": "job_1", "url": "u", "ready": False}, seen
    )
    api.announce_serving("http://127.0.0.1:9", "s" * 43)
    [request] = seen
    assert request.url.path == "/v1/worker/jobs/job_1/serving"
    assert json.loads(request.content) == {"url": "http://127.0.0.1:9", "secret": "s" * 43}
