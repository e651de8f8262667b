"""Jobs through the API: validation on create, tenant isolation, cancel of queued jobs,
the recipe catalog. No scheduler runs here, so created jobs stay queued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from modelfab import metering
from modelfab.db.models import Job
from tests.api.factories import AD, CLS, make_anomaly, make_classification, targz, upload
from tests.conftest import Api


def create_job(api: Api, key: str, **body: Any) -> Any:
    return api.call("POST", "/jobs", key, json={"recipe": "sleep", **body})


def queued_job(api: Api, key: str, **body: Any) -> dict[str, Any]:
    resp = create_job(api, key, **body)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def assert_error(resp: Any, status: int, code: str, param: str | None) -> None:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert (err["code"], err["param"]) == (code, param), err


@pytest.fixture
def member(api: Api) -> str:
    return str(api.create_tenant("vision")["api_key"])


# --------------------------------------------------------------------------- create


def test_create_queues_job_with_default_params(api: Api, member: str) -> None:
    job = queued_job(api, member, params={"seconds": 1}, priority=3, max_attempts=2)
    assert job["object"] == "job"
    assert job["id"].startswith("job_")
    assert job["status"] == "queued"
    assert job["params"] == {"seconds": 1.0, "fail_attempts": 0, "exit_code": 0}
    assert job["resources"] == {"gpus": 0.0, "cpus": 1.0, "memory_bytes": 0}
    assert (job["priority"], job["max_attempts"], job["attempt"], job["failures"]) == (3, 2, 0, 0)
    assert job["dataset"] is None and job["node"] is None
    assert job["queued_at"] is not None and job["started_at"] is None

    defaults = queued_job(api, member)
    assert defaults["params"]["seconds"] == 5.0
    assert defaults["max_attempts"] == 3

    got = api.call("GET", f"/jobs/{job['id']}", member)
    assert got.status_code == 200
    assert got.json()["status"] == "queued"
    assert got.json()["params"] == job["params"]


def test_create_records_validating_then_queued_events(api: Api, member: str) -> None:
    job = queued_job(api, member)
    resp = api.call("GET", f"/jobs/{job['id']}/events", member)
    assert resp.status_code == 200
    events = resp.json()["data"]
    assert [e["message"] for e in events] == ["Validating job", "Job queued"]
    assert [e["data"]["status"] for e in events] == ["validating", "queued"]
    assert events[0]["id"] < events[1]["id"]

    after = api.call("GET", f"/jobs/{job['id']}/events", member, params={"after": events[0]["id"]})
    assert [e["message"] for e in after.json()["data"]] == ["Job queued"]


def test_gpu_job_is_accepted_within_pool_and_quota(api: Api) -> None:
    key = api.create_tenant("vision", max_gpus=1)["api_key"]
    job = queued_job(api, key, resources={"gpus": 0.5, "cpus": 2})
    assert job["resources"]["gpus"] == 0.5
    whole = queued_job(api, api.admin_key, resources={"gpus": 2})
    assert whole["resources"]["gpus"] == 2


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"params": {"seconds": -1}}, 422, "invalid_request", "params.seconds"),
        ({"params": {"seconds": "soon"}}, 422, "invalid_request", "params.seconds"),
        ({"params": {"colour": "red"}}, 422, "invalid_request", "params.colour"),
        ({"recipe": "no-such-recipe"}, 404, "not_found", "recipe"),
        ({"resources": {"gpus": 1.5}}, 422, "invalid_request", "gpus"),
        ({"resources": {"gpus": -1}}, 422, "invalid_request", "resources.gpus"),
        ({"resources": {"cpus": 0}}, 422, "invalid_request", "resources.cpus"),
        ({"resources": {"gpus": 3}}, 422, "unschedulable", "gpus"),
        ({"resources": {"cpus": 100}}, 422, "unschedulable", "resources"),
        ({"dataset": "nothing-here"}, 404, "not_found", "dataset"),
        ({"dataset": "nothing-here:x"}, 422, "invalid_request", "dataset"),
        ({"max_attempts": 0}, 422, "invalid_request", "max_attempts"),
        ({"priority": 5000}, 422, "invalid_request", "priority"),
        # tiny requests oversubscribed a node: resources come in steps of 0.01
        ({"resources": {"cpus": 1e-9}}, 422, "invalid_request", "resources.cpus"),
        ({"resources": {"cpus": 0.015}}, 422, "invalid_request", "resources.cpus"),
        ({"resources": {"gpus": 1e-9}}, 422, "invalid_request", "resources.gpus"),
        ({"resources": {"gpus": 0.005}}, 422, "invalid_request", "resources.gpus"),
        ({"resources": {"gpus": 0.123}}, 422, "invalid_request", "resources.gpus"),
        ({"resources": {"memory_bytes": 2**64}}, 422, "invalid_request", "resources.memory_bytes"),
        ({"params": {"seconds": True}}, 422, "invalid_request", "params.seconds"),
        ({"params": {"fail_attempts": 10**30}}, 422, "invalid_request", "params.fail_attempts"),
    ],
)
def test_create_refuses_bad_requests(
    api: Api, member: str, body: dict[str, Any], status: int, code: str, param: str
) -> None:
    resp = create_job(api, member, **body)
    assert_error(resp, status, code, param)
    assert api.call("GET", "/jobs", member).json()["data"] == []


def test_gpu_request_above_tenant_quota_is_unschedulable(api: Api) -> None:
    key = api.create_tenant("vision", max_gpus=0.5)["api_key"]
    resp = create_job(api, key, resources={"gpus": 1})
    assert_error(resp, 422, "unschedulable", "gpus")
    message = resp.json()["error"]["message"]
    assert "vision" in message and "max_gpus" in message
    assert api.call("GET", "/jobs", key).json()["data"] == []


def test_cpu_request_beyond_every_node_names_the_cause(api: Api, member: str) -> None:
    resp = create_job(api, member, resources={"cpus": 100})
    assert resp.status_code == 422
    assert "100 cpus" in resp.json()["error"]["message"]
    assert "8" in resp.json()["error"]["message"]


def test_resources_on_the_grid_are_kept_exactly(api: Api, member: str) -> None:
    job = queued_job(api, member, resources={"gpus": 0.07, "cpus": 0.29})
    assert (job["resources"]["gpus"], job["resources"]["cpus"]) == (0.07, 0.29)


@pytest.mark.parametrize("raw", ["Infinity", "NaN"])
def test_infinite_resources_are_refused(api: Api, member: str, raw: str) -> None:
    body = f'{{"recipe": "sleep", "resources": {{"cpus": {raw}}}}}'
    resp = api.call(
        "POST", "/jobs", member, content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(resp, 422, "invalid_request", "resources.cpus")


@pytest.mark.parametrize(
    ("recipe", "make"),
    [(CLS, make_classification), (AD, make_anomaly)],
)
@pytest.mark.parametrize("name", ["../x", "x" * 300, "Upper", "a/b", ""])
def test_model_name_is_checked_at_create(
    api: Api, member: str, tmp_path: Path, recipe: str, make: Any, name: str
) -> None:
    """It failed only when the trained model was registered, at the end of the job."""
    uploaded = upload(api, member, "parts", targz(make(tmp_path / "parts")), task=recipe)
    assert uploaded.status_code == 201, uploaded.text
    body = {"recipe": recipe, "dataset": "parts", "params": {"model_name": name}}
    resp = api.call("POST", "/jobs", member, json=body)
    assert_error(resp, 422, "invalid_request", "params.model_name")
    assert api.call("GET", "/jobs", member).json()["data"] == []


def test_recipe_needs_a_name(api: Api, member: str) -> None:
    resp = api.call("POST", "/jobs", member, json={"params": {}})
    assert_error(resp, 422, "invalid_request", "recipe")


def test_job_pins_a_dataset_version(api: Api, member: str, tmp_path: Path) -> None:
    root = make_classification(tmp_path / "pets")
    v1 = upload(api, member, "pets", targz(root)).json()
    make_classification(root, {"cat": 4})
    v2 = upload(api, member, "pets", targz(root)).json()
    assert v2["version"] == 2

    pinned = queued_job(api, member, dataset="pets:1")
    assert (pinned["dataset"]["ref"], pinned["dataset"]["sha256"]) == ("pets:1", v1["sha256"])
    latest = queued_job(api, member, dataset="pets")
    assert latest["dataset"]["ref"] == "pets:2"
    shown = api.call("GET", f"/jobs/{pinned['id']}", member).json()
    assert shown["dataset"]["sha256"] == v1["sha256"]

    other = api.create_tenant("audio")["api_key"]
    assert_error(create_job(api, other, dataset="pets"), 404, "not_found", "dataset")
    assert_error(create_job(api, member, dataset="pets:3"), 404, "not_found", "dataset")


# --------------------------------------------------------------------------- isolation


def test_other_tenant_sees_not_found(api: Api, member: str) -> None:
    other = api.create_tenant("audio")["api_key"]
    job = queued_job(api, member)
    for method, suffix in [
        ("GET", ""),
        ("POST", "/cancel"),
        ("GET", "/events"),
        ("GET", "/logs"),
    ]:
        resp = api.call(method, f"/jobs/{job['id']}{suffix}", other)
        assert_error(resp, 404, "not_found", "job_id")
    assert api.call("GET", f"/jobs/{job['id']}", member).json()["status"] == "queued"


def test_logs_of_own_queued_job_are_empty(api: Api, member: str) -> None:
    job = queued_job(api, member)
    resp = api.call("GET", f"/jobs/{job['id']}/logs", member)
    assert resp.status_code == 200
    assert resp.json()["text"] == ""
    assert resp.json()["eof"] is False


def test_logs_of_an_attempt_the_job_never_had_are_not_found(
    api: Api, member: str, factory: sessionmaker[Session]
) -> None:
    """Attempt 99 of a job that ran twice is a 404 naming `attempt`, not an empty 200."""
    job = queued_job(api, member)
    with factory() as session, session.begin():
        row = session.get(Job, job["id"])
        assert row is not None
        row.attempt = 2
    for attempt in (3, 99):
        resp = api.call("GET", f"/jobs/{job['id']}/logs", member, params={"attempt": attempt})
        assert_error(resp, 404, "not_found", "attempt")
        assert "has had 2 attempts" in resp.json()["error"]["message"]
    for attempt in (1, 2):
        resp = api.call("GET", f"/jobs/{job['id']}/logs", member, params={"attempt": attempt})
        assert resp.status_code == 200, resp.text
        assert resp.json()["attempt"] == attempt


def test_logs_of_attempt_one_of_a_job_not_started_are_not_found(api: Api, member: str) -> None:
    job = queued_job(api, member)
    resp = api.call("GET", f"/jobs/{job['id']}/logs", member, params={"attempt": 1})
    assert_error(resp, 404, "not_found", "attempt")
    assert "not started" in resp.json()["error"]["message"]


def test_list_shows_only_own_jobs_and_filters_by_status(api: Api, member: str) -> None:
    other = api.create_tenant("audio")["api_key"]
    mine = [queued_job(api, member)["id"] for _ in range(3)]
    theirs = queued_job(api, other)["id"]
    api.call("POST", f"/jobs/{mine[0]}/cancel", member)

    listed = api.call("GET", "/jobs", member)
    assert listed.status_code == 200
    assert sorted(j["id"] for j in listed.json()["data"]) == sorted(mine)
    assert [j["id"] for j in api.call("GET", "/jobs", other).json()["data"]] == [theirs]

    queued = api.call("GET", "/jobs", member, params={"status": "queued"}).json()["data"]
    assert sorted(j["id"] for j in queued) == sorted(mine[1:])
    cancelled = api.call("GET", "/jobs", member, params={"status": "cancelled"}).json()["data"]
    assert [j["id"] for j in cancelled] == [mine[0]]
    assert api.call("GET", "/jobs", member, params={"status": "running"}).json()["data"] == []

    limited = api.call("GET", "/jobs", member, params={"limit": 2}).json()["data"]
    assert len(limited) == 2


def test_list_refuses_unknown_status(api: Api, member: str) -> None:
    resp = api.call("GET", "/jobs", member, params={"status": "sleeping"})
    assert_error(resp, 422, "invalid_request", "status")


# --------------------------------------------------------------------------- cancel


def test_cancel_queued_job_ends_it_at_once(api: Api, member: str) -> None:
    job = queued_job(api, member)
    resp = api.call("POST", f"/jobs/{job['id']}/cancel", member)
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "cancelled"
    assert body["cancel_requested"] is True
    assert body["finished_at"] is not None

    events = api.call("GET", f"/jobs/{job['id']}/events", member).json()["data"]
    assert [e["message"] for e in events] == [
        "Validating job",
        "Job queued",
        "Job cancelled before it ran",
    ]

    again = api.call("POST", f"/jobs/{job['id']}/cancel", member)
    assert again.status_code == 200
    assert again.json()["status"] == "cancelled"
    assert again.json()["finished_at"] == body["finished_at"]
    assert len(api.call("GET", f"/jobs/{job['id']}/events", member).json()["data"]) == 3


def test_cancel_unknown_job_is_not_found(api: Api, member: str) -> None:
    assert_error(api.call("POST", "/jobs/job_nope/cancel", member), 404, "not_found", "job_id")


# --------------------------------------------------------------------------- catalog


def test_recipes_list_sleep_with_its_schema(api: Api, member: str) -> None:
    resp = api.call("GET", "/recipes", member)
    assert resp.status_code == 200
    recipes = {r["name"]: r for r in resp.json()["data"]}
    sleep = recipes["sleep"]
    assert sleep["needs_dataset"] is False
    schema = sleep["params"]
    assert schema["type"] == "object"
    assert set(schema["properties"]) == {"seconds", "fail_attempts", "exit_code"}
    assert schema["properties"]["seconds"]["default"] == 5.0
    assert schema["additionalProperties"] is False
    assert api.call("GET", "/recipes").status_code == 401


def test_openapi_lists_job_endpoints(api: Api) -> None:
    resp = api.client.get("/openapi.json")
    assert resp.status_code == 200
    paths = resp.json()["paths"]
    assert {"post", "get"} <= set(paths["/v1/jobs"])
    assert "/v1/jobs/{job_id}/cancel" in paths
    assert "/v1/datasets/upload" in paths


def test_spent_gpu_hour_budget_refuses_gpu_jobs_but_not_cpu_jobs(
    api: Api, factory: sessionmaker[Session]
) -> None:
    tenant = api.create_tenant("budgeted", gpu_hours_budget=1)
    key = tenant["api_key"]
    queued_job(api, key, resources={"gpus": 1})  # nothing spent yet
    with factory() as session, session.begin():
        metering.record(session, tenant_id=tenant["id"], meter="gpu_seconds", quantity=3600,
                        ref_type="job", ref_id="job_old", key="test:spent")  # fmt: skip
    resp = create_job(api, key, resources={"gpus": 0.25})
    assert_error(resp, 429, "quota_exceeded", "gpus")
    assert "1 GPU hours" in resp.json()["error"]["message"]
    queued_job(api, key, resources={"gpus": 0})  # CPU work is still allowed
