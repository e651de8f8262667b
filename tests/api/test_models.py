"""The model registry through the API: registration by the worker endpoints of a real job,
versions, aliases, lineage, verified downloads, and tenant isolation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import modelfab
from modelfab.db.models import ModelVersion
from modelfab.settings import ServerSettings
from tests.api.factories import make_classification, targz, upload
from tests.conftest import Api
from tests.registry_factories import (
    LABELS,
    ONNX,
    WEIGHTS,
    complete,
    model_report,
    register,
    sha,
    start_attempt,
    upload_artifact,
)


@dataclass
class Team:
    key: str
    dataset: dict[str, Any]


@pytest.fixture
def team(api: Api, tmp_path: Path) -> Team:
    key = str(api.create_tenant("vision")["api_key"])
    resp = upload(api, key, "pets", targz(make_classification(tmp_path / "pets")))
    assert resp.status_code == 201, resp.text
    return Team(key, resp.json())


def running_job(api: Api, factory: sessionmaker[Session], key: str) -> tuple[str, str]:
    """A job created through the API, then claimed as the scheduler would: (id, token)."""
    resp = api.call(
        "POST", "/jobs", key, json={"recipe": "sleep", "dataset": "pets", "params": {"seconds": 0}}
    )
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["id"]
    return job_id, start_attempt(factory, job_id)


def trained(api: Api, factory: sessionmaker[Session], key: str, name: str = "pets-clf") -> str:
    """Run one job to success with a model; returns the job id."""
    job_id, token = running_job(api, factory, key)
    assert register(api.client, job_id, token, name) == {"status": "succeeded"}
    return job_id


def get(api: Api, key: str, path: str) -> Any:
    resp = api.call("GET", path, key)
    assert resp.status_code == 200, resp.text
    return resp.json()


def set_alias(api: Api, key: str, alias: str, version: int) -> Any:
    body = {"alias": alias, "version": version}
    return api.call("POST", "/models/pets-clf/aliases", key, json=body)


def assert_error(resp: Any, status: int, code: str, param: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err


# --------------------------------------------------------------------------- registration


def test_worker_registers_version_with_lineage(
    api: Api, factory: sessionmaker[Session], team: Team
) -> None:
    job_id, token = running_job(api, factory, team.key)
    up = upload_artifact(api.client, job_id, token, "weights.pt", WEIGHTS, "pytorch")
    assert up.status_code == 201, up.text
    assert up.json()["sha256"] == sha(WEIGHTS)
    assert up.json()["size_bytes"] == len(WEIGHTS)
    assert "uri" not in up.json()

    assert register(api.client, job_id, token, "pets-clf") == {"status": "succeeded"}

    job = get(api, team.key, f"/jobs/{job_id}")
    assert job["status"] == "succeeded"
    assert job["result"] == {"model": "pets-clf:1"}
    v = get(api, team.key, "/models/pets-clf:1")
    assert (v["object"], v["name"], v["version"], v["ref"]) == (
        "model.version",
        "pets-clf",
        1,
        "pets-clf:1",
    )
    assert v["task"] == "image-classification"
    assert v["metrics"] == {"accuracy": 0.9}
    assert v["extra"]["labels"] == ["cat", "dog"]
    assert (v["recipe"], v["base_model"], v["job_id"]) == ("sleep", "tiny-cnn", job_id)
    assert v["artifacts"] == [
        {"name": "labels.json", "format": "json", "sha256": sha(LABELS), "size_bytes": len(LABELS)},
        {"name": "model.onnx", "format": "onnx", "sha256": sha(ONNX), "size_bytes": len(ONNX)},
        {
            "name": "weights.pt",
            "format": "pytorch",
            "sha256": sha(WEIGHTS),
            "size_bytes": len(WEIGHTS),
        },
    ]
    assert v["lineage"] == {
        "job_id": job_id,
        "attempt": 1,
        "dataset_version_id": team.dataset["id"],
        "dataset_ref": "pets:1",
        "dataset_sha256": team.dataset["sha256"],
        "recipe": "sleep",
        "recipe_version": v["recipe_version"],
        "base_model": "tiny-cnn",
        "params": job["params"],
        "code_version": modelfab.__version__,
    }
    assert v["recipe_version"]
    assert v["versions"] == [1]


def test_artifact_upload_checks_sha256_and_token(
    api: Api, factory: sessionmaker[Session], team: Team
) -> None:
    job_id, token = running_job(api, factory, team.key)
    wrong = upload_artifact(
        api.client, job_id, token, "weights.pt", WEIGHTS, "pytorch", digest=sha(b"other")
    )
    assert_error(wrong, 422, "invalid_request", "sha256")
    bad_format = upload_artifact(api.client, job_id, token, "w.pt", WEIGHTS, "pickle")
    assert_error(bad_format, 422, "invalid_request", "format")
    bad_name = upload_artifact(api.client, job_id, token, "../w.pt", WEIGHTS, "pytorch")
    assert_error(bad_name, 422, "invalid_request", "name")
    no_token = upload_artifact(api.client, job_id, "not-the-token", "w.pt", WEIGHTS, "pytorch")
    assert_error(no_token, 401, "unauthenticated")


def test_versions_count_up_one_per_job(
    api: Api, factory: sessionmaker[Session], team: Team
) -> None:
    first = trained(api, factory, team.key)
    second_id, token = running_job(api, factory, team.key)
    assert register(api.client, second_id, token, "pets-clf") == {"status": "succeeded"}

    assert get(api, team.key, "/models/pets-clf")["version"] == 2
    assert get(api, team.key, "/models/pets-clf:1")["job_id"] == first
    listed = get(api, team.key, "/models")["data"]
    assert [(m["name"], m["latest_version"], m["versions"]) for m in listed] == [("pets-clf", 2, 2)]
    # also OpenAI's model list: the id is the name `model=` takes
    [openai_view] = [(m["id"], m["object"], type(m["created"]), m["owned_by"]) for m in listed]
    assert openai_view == ("pets-clf", "model", int, get(api, team.key, "/me")["tenant"])

    # A retried complete finds the attempt over: it cannot make a second version.
    again = complete(api.client, second_id, token, model={"name": "pets-clf", "task": "x"})
    assert_error(again, 401, "unauthenticated")
    with factory() as session:
        count = session.scalar(
            select(func.count()).select_from(ModelVersion).where(ModelVersion.job_id == second_id)
        )
    assert count == 1


def test_failed_completion_registers_nothing(
    api: Api, factory: sessionmaker[Session], team: Team
) -> None:
    job_id, token = running_job(api, factory, team.key)
    model = model_report(api.client, job_id, token, "pets-clf")
    resp = complete(api.client, job_id, token, status="failed", model=model)
    assert resp.status_code == 200, resp.text
    assert get(api, team.key, "/models")["data"] == []
    assert_error(api.call("GET", "/models/pets-clf", team.key), 404, "not_found", "ref")


def test_artifact_answers_reveal_nothing_of_the_shared_store(
    api: Api, factory: sessionmaker[Session], team: Team, tmp_path: Path
) -> None:
    """Two tenants store the same bytes (kept once): each answer is what its own request
    said, the same whoever stored first, with no path; each registers its model from it."""
    other = str(api.create_tenant("robots")["api_key"])
    assert upload(api, other, "pets", targz(make_classification(tmp_path / "p"))).status_code == 201
    expected = {"object": "artifact", "name": "weights.pt", "format": "pytorch",
                "sha256": sha(WEIGHTS), "size_bytes": len(WEIGHTS)}  # fmt: skip
    for key in (team.key, other):
        job_id, token = running_job(api, factory, key)
        up = upload_artifact(api.client, job_id, token, "weights.pt", WEIGHTS, "pytorch")
        assert (up.status_code, up.json()) == (201, expected)
        model = {"name": "pets-clf", "task": "image-classification", "artifacts": [up.json()]}
        assert complete(api.client, job_id, token, model=model).json() == {"status": "succeeded"}
        assert get(api, key, "/models/pets-clf:1")["job_id"] == job_id


def test_unknown_artifact_fails_the_job_instead_of_registering(
    api: Api, factory: sessionmaker[Session], team: Team
) -> None:
    job_id, token = running_job(api, factory, team.key)
    ghost = {
        "name": "weights.pt",
        "format": "pytorch",
        "uri": "file:///etc/passwd",
        "sha256": sha(b"ghost"),
        "size_bytes": 5,
    }
    model = {"name": "pets-clf", "task": "image-classification", "artifacts": [ghost]}
    resp = complete(api.client, job_id, token, model=model)
    assert resp.status_code == 200 and resp.json() == {"status": "failed"}
    job = get(api, team.key, f"/jobs/{job_id}")
    assert job["error"]["code"] == "model_not_registered"
    assert "could not be registered" in job["error"]["message"]
    assert job["result"] is None
    assert get(api, team.key, "/models")["data"] == []


# --------------------------------------------------------------------------- aliases, refs


def test_aliases_move_and_resolve(api: Api, factory: sessionmaker[Session], team: Team) -> None:
    trained(api, factory, team.key)
    trained(api, factory, team.key)

    set_v1 = set_alias(api, team.key, "production", 1)
    assert set_v1.status_code == 200, set_v1.text
    assert (set_v1.json()["ref"], set_v1.json()["aliases"]) == ("pets-clf:1", ["production"])
    assert get(api, team.key, "/models/pets-clf@production")["version"] == 1

    moved = set_alias(api, team.key, "production", 2)
    assert moved.status_code == 200, moved.text
    assert get(api, team.key, "/models/pets-clf@production")["version"] == 2
    assert get(api, team.key, "/models/pets-clf:1")["aliases"] == []
    [listed] = get(api, team.key, "/models")["data"]
    assert listed["aliases"] == {"production": 2}

    bad = set_alias(api, team.key, "Prod!", 1)
    assert_error(bad, 422, "invalid_request", "alias")
    missing = set_alias(api, team.key, "staging", 9)
    assert_error(missing, 404, "not_found", "version")
    assert_error(api.call("GET", "/models/pets-clf@staging", team.key), 404, "not_found", "ref")
    assert_error(api.call("GET", "/models/pets-clf:x", team.key), 422, "invalid_request", "ref")


def test_lineage_links_dataset_job_and_base_model(
    api: Api, factory: sessionmaker[Session], team: Team
) -> None:
    job_id = trained(api, factory, team.key)
    lin = get(api, team.key, "/models/pets-clf/lineage")
    assert lin["dataset"] == {
        "id": team.dataset["id"],
        "ref": "pets:1",
        "sha256": team.dataset["sha256"],
    }
    assert lin["job"] == {
        "id": job_id,
        "recipe": "sleep",
        "recipe_version": lin["job"]["recipe_version"],
        "attempt": 1,
        "status": "succeeded",
    }
    assert lin["model_version"]["ref"] == "pets-clf:1"
    assert lin["base_model"]["id"] == "tiny-cnn"
    assert lin["base_model"]["licence"] == "Apache-2.0"
    assert lin["code_version"] == modelfab.__version__
    assert lin["endpoints"] == []


# --------------------------------------------------------------------------- downloads


def test_download_streams_verified_bytes(
    api: Api, factory: sessionmaker[Session], team: Team, settings: ServerSettings
) -> None:
    trained(api, factory, team.key)
    resp = api.call("GET", "/models/pets-clf:1/artifacts/weights.pt", team.key)
    assert resp.status_code == 200
    assert resp.content == WEIGHTS
    assert resp.headers["x-sha256"] == sha(WEIGHTS)

    missing = api.call("GET", "/models/pets-clf:1/artifacts/nope.bin", team.key)
    assert_error(missing, 404, "not_found", "name")

    stored = settings.artifacts_dir / sha(WEIGHTS)[:2] / sha(WEIGHTS)
    stored.chmod(0o644)
    stored.write_bytes(WEIGHTS[:-1] + b"!")
    corrupt = api.call("GET", "/models/pets-clf:1/artifacts/weights.pt", team.key)
    assert_error(corrupt, 409, "artifact_corrupt", "sha256")


def test_other_tenants_see_nothing(api: Api, factory: sessionmaker[Session], team: Team) -> None:
    trained(api, factory, team.key)
    other = str(api.create_tenant("other")["api_key"])
    assert get(api, other, "/models")["data"] == []
    for path in (
        "/models/pets-clf",
        "/models/pets-clf:1",
        "/models/pets-clf/lineage",
        "/models/pets-clf:1/artifacts/weights.pt",
    ):
        assert_error(api.call("GET", path, other), 404, "not_found")
    alias = set_alias(api, other, "prod", 1)
    assert_error(alias, 404, "not_found")
    assert get(api, team.key, "/models/pets-clf")["aliases"] == []
