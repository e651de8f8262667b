"""`modelfab endpoints`, `predict` and `usage --by endpoint` through `main(argv)`.

Replicas are real worker processes serving a tiny ONNX classifier (as in
tests/e2e/test_serving.py): what is tested is the CLI over the real wiring, so one flow
shares one endpoint's start-up instead of paying it per verb."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.cli.main import EXIT_API_ERROR, EXIT_USAGE
from modelfab.db.models import Tenant
from modelfab.server import Platform
from tests.cli.conftest import RunCli
from tests.e2e.helpers import eventually
from tests.e2e.test_serving import expected_labels, register_tiny
from tests.registry_factories import insert_running_job, register
from tests.serving.factories import image_bytes, labels

pytestmark = pytest.mark.timeout(120)

TEAM = "vision"  # the tenant register_tiny registers models for


def as_json(out: str) -> Any:
    return json.loads(out)


def write_images(folder: Path, seeds: list[int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img-{s}.png" for s in seeds]
    for path, seed in zip(paths, seeds, strict=True):
        path.write_bytes(image_bytes(seed=seed))
    return paths


def register_broken(platform: Platform, factory: sessionmaker[Session], name: str) -> None:
    """Register a version of `name` whose ONNX file no replica can load."""
    with factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == TEAM))
    assert tenant_id is not None
    broken = {
        "model.onnx": (b"this is not an onnx graph", "onnx"),
        "labels.json": (json.dumps(labels()).encode(), "json"),
    }
    job_id, token = insert_running_job(factory, tenant_id)
    with httpx.Client(base_url=platform.url) as http:
        register(http, job_id, token, name, artifacts=broken)


def usage_csv(cli: RunCli) -> list[dict[str, str]]:
    code, out, err = cli("usage", "--by", "endpoint", "--output", "csv")
    assert code == 0, err
    return list(csv.DictReader(io.StringIO(out)))


def team_key(cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> str:
    """Create the team as the admin with a rate limit; continue as its member key."""
    code, out, _ = cli("tenants", "create", TEAM, "--rate-limit", "1000", "-o", "json")
    tenant = as_json(out)
    assert code == 0 and tenant["rate_limit_rps"] == 1000
    code, out, _ = cli("tenants", "update", TEAM, "--rate-limit", "500")
    assert code == 0 and "500" in out
    monkeypatch.setenv("MODELFAB_API_KEY", tenant["api_key"])
    return str(tenant["api_key"])


def test_endpoint_lifecycle_predict_and_usage(
    cli: RunCli,
    platform: Platform,
    factory: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    team_key(cli, monkeypatch)
    files = register_tiny(platform, factory, tmp_path, "parts", seed=1)

    code, out, err = cli("endpoints", "create", "parts", "--model", "parts:1", "--cpus", "0.5",
                         "--max-batch-size", "4")  # fmt: skip
    assert code == 0, err
    assert "ready" in out and "1/1 replicas ready" in out and "parts:1" in out

    code, out, _ = cli("endpoints", "list")
    assert code == 0 and "parts" in out and "1/1" in out and "ready" in out
    code, out, _ = cli("endpoints", "show", "parts")
    job_id = as_json(cli("endpoints", "show", "parts", "-o", "json")[1])["replica_jobs"][0]
    assert code == 0 and "replica jobs" in out and job_id["job_id"] in out

    images = write_images(tmp_path / "images", [3, 4])
    labels = expected_labels(files, [p.read_bytes() for p in images])
    code, out, err = cli("predict", "parts", *map(str, images))
    assert code == 0, err
    lines = {line.split()[1]: line for line in out.splitlines() if "img-" in line}
    assert [lines[str(p)].split()[3] for p in images] == labels  # "│ file │ label │ score │"
    code, out, _ = cli("predict", "parts", str(images[0]), "--top-k", "2", "-o", "json")
    answer = as_json(out)
    assert code == 0 and answer["data"][0]["label"] == labels[0]
    assert len(answer["data"][0]["top_k"]) == 2

    def both_metered() -> dict[str, dict[str, str]] | None:
        rows = {r["meter"]: r for r in usage_csv(cli)}
        done = "requests" in rows and float(rows["requests"]["quantity"]) == 2
        return rows if done else None

    rows = eventually(both_metered, 10, "both requests to be metered")
    assert rows["requests"]["endpoint"] == "parts"
    assert float(rows["items"]["quantity"]) == 3 and rows["items"]["tenant"] == TEAM

    # More files than one request may carry (64) go in several requests, answered as one.
    many = write_images(tmp_path / "many", list(range(10, 80)))
    code, out, err = cli("predict", "parts", *map(str, many), "-o", "json")
    assert code == 0, err
    answer = as_json(out)
    assert [d["index"] for d in answer["data"]] == list(range(70))
    assert answer["usage"]["items"] == 70
    many_labels = expected_labels(files, [p.read_bytes() for p in many])
    assert [d["label"] for d in answer["data"]] == many_labels

    code, out, err = cli("endpoints", "update", "parts", "--replicas", "2", "--wait", "-o", "json")
    assert code == 0, err
    assert as_json(out)["ready_replicas"] == 2 and as_json(out)["status"] == "ready"

    # A new model rolls over both replicas; the command waits for the switch.
    register_tiny(platform, factory, tmp_path, "parts", seed=2)
    code, out, err = cli("endpoints", "update", "parts", "--model", "parts:2")
    assert code == 0, err
    assert "ready" in out and "parts:2" in out
    # One the replicas cannot load is refused: the endpoint keeps serving parts:2.
    register_broken(platform, factory, "parts")
    code, out, err = cli("endpoints", "update", "parts", "--model", "parts:3")
    assert code == 1 and "could not load the new model" in err
    shown = as_json(cli("endpoints", "show", "parts", "-o", "json")[1])
    assert shown["model"]["version"] == 2 and shown["status"] == "ready"
    assert shown["rollout_error"]["code"] == "model_load_failed"

    code, out, _ = cli("endpoints", "delete", "parts")
    assert code == 0 and "deleted" in out
    code, _, err = cli("endpoints", "show", "parts")
    assert code == EXIT_API_ERROR and "no endpoint named 'parts'" in err
    endpoint_id = rows["requests"]["endpoint_id"]
    assert {r["endpoint"] for r in usage_csv(cli)} == {endpoint_id}  # deleted: its id shows


def test_usage_errors_are_named_before_any_request(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.png"
    monkeypatch.setenv("MODELFAB_URL", "http://127.0.0.1:9")  # any request would exit 3
    code, _, err = cli("predict", "parts", str(write_images(tmp_path, [1])[0]), str(missing))
    assert code == EXIT_USAGE and "missing.png" in err
    code, _, err = cli("endpoints", "update", "parts")
    assert code == EXIT_USAGE and "at least one option" in err
    code, _, err = cli("usage", "--by", "model")
    assert code == EXIT_USAGE and "endpoint" in err


def test_create_names_api_errors_and_wait_fails_when_not_ready(
    cli: RunCli,
    platform: Platform,
    factory: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    team_key(cli, monkeypatch)
    code, _, err = cli("endpoints", "create", "parts", "--model", "nope")
    assert code == EXIT_API_ERROR and "nope" in err
    register_tiny(platform, factory, tmp_path, "parts", seed=1)
    code, _, err = cli("endpoints", "create", "parts", "--model", "parts", "--timeout", "0")
    assert code == 1 and "not ready in time" in err
    code, out, _ = cli("endpoints", "create", "other", "--model", "parts", "--no-wait", "-o",
                       "json")  # fmt: skip
    assert code == 0 and as_json(out)["status"] == "starting"
