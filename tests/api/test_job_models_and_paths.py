"""Jobs that run a registered model on node paths (batch-inspection): the model ref is
pinned to a version at create, and paths are refused unless the tenant may use them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from modelfab.settings import ServerSettings
from tests.api.test_jobs import assert_error
from tests.conftest import Api
from tests.registry_factories import ARTIFACTS, insert_running_job, register


@pytest.fixture
def settings(settings: ServerSettings, tmp_path: Path) -> ServerSettings:
    root = tmp_path / "shared"
    (root / "archive").mkdir(parents=True)
    settings.path_roots = [root]
    return settings


@pytest.fixture
def member(api: Api) -> dict[str, Any]:
    return api.create_tenant("inspection")


def registered(
    api: Api, factory: sessionmaker[Session], tenant_id: str, name: str, **kw: Any
) -> None:
    job_id, token = insert_running_job(factory, tenant_id)
    register(api.client, job_id, token, name, **kw)


def inspect(api: Api, key: str, **params: Any) -> Any:
    return api.call("POST", "/jobs", key, json={"recipe": "batch-inspection", "params": params})


def test_the_model_is_pinned_to_a_version_at_create(
    api: Api, factory: sessionmaker[Session], member: dict[str, Any], settings: ServerSettings
) -> None:
    registered(api, factory, member["id"], "castings")
    root = settings.path_roots[0]
    paths = {"input": str(root / "archive"), "output": str(root / "results")}
    first = inspect(api, member["api_key"], model="castings", **paths)
    assert first.status_code == 201, first.text
    pinned = first.json()["params"]["model_version_id"]
    version = api.call("GET", "/models/castings:1", member["api_key"]).json()
    assert pinned == version["id"]

    registered(api, factory, member["id"], "castings")  # version 2 arrives
    latest = inspect(api, member["api_key"], model="castings", **paths).json()
    assert latest["params"]["model_version_id"] != pinned
    again = inspect(api, member["api_key"], model="castings:1", **paths).json()
    assert again["params"]["model_version_id"] == pinned
    stored = api.call("GET", f"/jobs/{first.json()['id']}", member["api_key"]).json()
    assert stored["params"]["model_version_id"] == pinned  # the first job keeps version 1


def test_unknown_foreign_or_unservable_models_are_refused(
    api: Api, factory: sessionmaker[Session], member: dict[str, Any], settings: ServerSettings
) -> None:
    root = settings.path_roots[0]
    paths = {"input": str(root / "archive"), "output": str(root / "out")}
    other = api.create_tenant("other")
    registered(api, factory, other["id"], "theirs")
    weights_only = {"weights.pt": ARTIFACTS["weights.pt"]}
    registered(api, factory, member["id"], "raw", artifacts=weights_only)
    for model, status, code in (
        ("nothing", 404, "not_found"),
        ("theirs", 404, "not_found"),
        ("raw", 422, "invalid_request"),
    ):
        resp = inspect(api, member["api_key"], model=model, **paths)
        assert_error(resp, status, code, "params.model")
    assert "model.onnx" in inspect(api, member["api_key"], model="raw", **paths).text


def test_paths_outside_the_roots_are_forbidden_to_tenants_not_to_admins(
    api: Api, factory: sessionmaker[Session], member: dict[str, Any], settings: ServerSettings
) -> None:
    registered(api, factory, member["id"], "castings")
    root = settings.path_roots[0]
    (root / "escape").symlink_to("/etc")
    out = str(root / "results")
    key = member["api_key"]
    for bad in ("/etc", f"{root}/../outside", str(root / "escape" / "passwd")):
        resp = inspect(api, key, model="castings", input=bad, output=out)
        assert_error(resp, 403, "forbidden", "params.input")
    assert "--path-root" in inspect(api, key, model="castings", input="/etc", output=out).text
    relative = inspect(api, key, model="castings", input=str(root), output="results")
    assert_error(relative, 422, "invalid_request", "params.output")

    registered(api, factory, api.create_tenant("ops")["id"], "x")  # unrelated tenant
    admin_model = insert_running_job(factory, _admin_id(api))
    register(api.client, *admin_model, "fleet")
    ok = inspect(api, api.admin_key, model="fleet", input="/etc", output="/tmp/fleet-results")
    assert ok.status_code == 201, ok.text


def _admin_id(api: Api) -> str:
    me = api.call("GET", "/tenants", api.admin_key).json()["data"]
    return str(next(t["id"] for t in me if t["name"] == "admin"))
