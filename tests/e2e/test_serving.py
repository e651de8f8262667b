"""Endpoints end to end: a real control plane, replica jobs as real worker processes
serving a tiny ONNX classifier on loopback, requests through the gateway over HTTP.

Real processes because what is tested is the wiring between them: placement of replicas,
announce, routing, restart of a killed replica, metering through the journal."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.client import ApiError, Client
from modelfab.db.models import EndpointReplica, Tenant
from modelfab.errors import ModelfabError
from modelfab.server import Platform
from modelfab.serving.models import LoadedModel, ModelFiles
from tests.e2e.helpers import eventually
from tests.registry_factories import insert_running_job, register
from tests.serving.factories import image_bytes, labels, write_classifier

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def team(platform: Platform) -> Client:
    admin = Client(platform.url, platform.settings.admin_key_path.read_text().strip())
    tenant = admin.create_tenant("vision", rate_limit_rps=1000)
    return Client(platform.url, tenant.api_key)


def register_tiny(
    platform: Platform | str,
    factory: sessionmaker[Session],
    tmp_path: Path,
    name: str,
    seed: int,
    tenant: str = "vision",
) -> ModelFiles:
    """Register a version of `name` holding a tiny real ONNX classifier, as a job would
    (`platform` may be the control plane's URL)."""
    url = platform if isinstance(platform, str) else platform.url
    with factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant))
    assert tenant_id is not None
    onnx_path = write_classifier(tmp_path / f"{name}-{seed}" / "model.onnx", seed=seed)
    artifacts = {
        "model.onnx": (onnx_path.read_bytes(), "onnx"),
        "labels.json": (json.dumps(labels()).encode(), "json"),
    }
    job_id, token = insert_running_job(factory, tenant_id)
    with httpx.Client(base_url=url) as http:
        register(http, job_id, token, name, artifacts=artifacts)
    return ModelFiles(version_id="direct", onnx_path=onnx_path, labels=labels())


def expected_labels(files: ModelFiles, images: list[bytes]) -> list[str]:
    """What ONNX Runtime says when called directly on the same preprocessed images."""
    model = LoadedModel(files)
    batch = np.stack([model.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
    probs = model.predict(batch)
    return [files.labels["classes"][i] for i in probs.argmax(axis=1)]


def predict(platform: Platform | str, key: str, name: str, images: list[bytes]) -> httpx.Response:
    url = platform if isinstance(platform, str) else platform.url
    files = [("file", (f"img-{i}.png", b, "image/png")) for i, b in enumerate(images)]
    return httpx.post(
        f"{url}/v1/endpoints/{name}/predict",
        headers={"Authorization": f"Bearer {key}"},
        files=files,
        timeout=30,
    )


def team_key(team: Client) -> str:
    return str(team._http.headers["Authorization"].split()[1])


def test_endpoint_serves_the_registered_model_and_meters_every_request(
    platform: Platform, team: Client, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    files = register_tiny(platform, factory, tmp_path, "parts", seed=1)
    created = team.create_endpoint("parts", model="parts:1", cpus=1, max_batch_size=4)
    assert created.status == "starting"
    ready = team.wait_endpoint("parts", timeout_s=60)
    assert ready.ready_replicas == 1 and ready.model.version == 1

    images = [image_bytes(seed=s) for s in range(5)]
    resp = predict(platform, team_key(team), "parts", images)
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert [d["name"] for d in data] == [f"img-{i}.png" for i in range(5)]
    assert [d["label"] for d in data] == expected_labels(files, images)

    # JSON with base64 works too, and the SDK's predict.
    body = {"images": [base64.b64encode(images[0]).decode()]}
    resp = httpx.post(
        f"{platform.url}/v1/endpoints/parts/predict",
        headers={"Authorization": f"Bearer {team_key(team)}"},
        json=body,
    )
    assert resp.status_code == 200 and resp.json()["data"][0]["label"] == data[0]["label"]
    assert team.predict("parts", [("a.png", images[1])]).data[0].label == data[1]["label"]

    def metered() -> dict[str, float] | None:
        usage = {u.meter: u.quantity for u in team.usage(by="meter")}
        return usage if usage.get("requests") == 3 else None

    usage = eventually(metered, timeout_s=10, what="requests to be metered")
    assert usage["items"] == 5 + 1 + 1


def replica_auth(factory: sessionmaker[Session], url: str) -> dict[str, str]:
    """The header only the platform knows for the replica at `url` (from its row)."""
    with factory() as session:
        secret = session.scalar(select(EndpointReplica.secret).where(EndpointReplica.url == url))
    assert secret is not None
    return {"Authorization": f"Bearer {secret}"}


def test_a_replica_answers_only_the_platform_and_passes_on_its_errors(
    platform: Platform, team: Client, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """Whoever finds a replica's loopback port gets 401 and skips nothing: predictions go
    through the gateway (auth, rate limits, metering). Asked for a version it cannot
    fetch, the replica answers the control plane's error, not a 500."""
    register_tiny(platform, factory, tmp_path, "parts", seed=1)
    team.create_endpoint("parts", model="parts", cpus=0.5)
    endpoint = team.wait_endpoint("parts", timeout_s=60)
    url = endpoint.replica_jobs[0].url
    assert url is not None and "secret" not in team.get_endpoint("parts").model_dump_json()
    version_id = endpoint.model.version_id
    image = [("file", ("a.png", image_bytes(), "image/png"))]

    for headers in ({}, {"Authorization": f"Bearer {team_key(team)}"}):
        direct = httpx.post(f"{url}/models/{version_id}/predict", headers=headers, files=image)
        assert direct.status_code == 401, direct.text
        assert direct.json()["error"]["code"] == "unauthenticated"
        assert httpx.get(f"{url}/health", headers=headers).status_code == 401
    assert predict(platform, team_key(team), "parts", [image_bytes()]).status_code == 200

    auth = replica_auth(factory, url)
    assert httpx.post(f"{url}/models/{version_id}/predict", headers=auth, files=image).is_success
    missing = httpx.post(f"{url}/models/mv_nope/load", headers=auth)
    assert missing.status_code == 422, missing.text
    assert missing.json()["error"] == {
        "code": "invalid_request",
        "message": "no model version mv_nope here",
        "param": "version_id",
        "type": "invalid_request_error",
    }


def test_bad_requests_get_4xx_naming_the_problem(
    platform: Platform, team: Client, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    register_tiny(platform, factory, tmp_path, "parts", seed=1)
    team.create_endpoint("parts", model="parts", cpus=0.5)
    team.wait_endpoint("parts", timeout_s=60)
    key = team_key(team)
    url = f"{platform.url}/v1/endpoints/parts/predict"
    auth = {"Authorization": f"Bearer {key}"}

    corrupt = predict(platform, key, "parts", [image_bytes(), b"\x89PNG not really"])
    assert corrupt.status_code == 422 and "img-1.png" in corrupt.json()["error"]["message"]
    wrong_type = httpx.post(url, headers={**auth, "content-type": "text/plain"}, content=b"x")
    assert wrong_type.status_code == 415
    assert httpx.post(url, headers={"Authorization": "Bearer nope"}, json={}).status_code == 401
    missing = httpx.post(f"{platform.url}/v1/endpoints/nope/predict", headers=auth, json={})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]

    # Another tenant's key cannot see the endpoint.
    admin = Client(platform.url, platform.settings.admin_key_path.read_text().strip())
    other = admin.create_tenant("other").api_key
    assert predict(platform, other, "parts", [image_bytes()]).status_code == 404
    with pytest.raises(ApiError) as err:
        Client(platform.url, other).get_endpoint("parts")
    assert err.value.status == 404


def test_a_killed_replica_is_replaced_and_requests_are_retried(
    platform: Platform, team: Client, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    register_tiny(platform, factory, tmp_path, "parts", seed=2)
    team.create_endpoint("parts", model="parts:1", replicas=2, cpus=0.5, max_wait_ms=1)
    endpoint = team.wait_endpoint("parts", timeout_s=60)
    key = team_key(team)
    images = [image_bytes(seed=7)]
    victim = endpoint.replica_jobs[0].job_id
    pid = _pid_of(team, victim)

    results: list[int] = []
    stop = time.monotonic() + 6

    def load() -> None:
        while time.monotonic() < stop:
            results.append(predict(platform, key, "parts", images).status_code)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load) for _ in range(4)]
        time.sleep(1.5)
        os.killpg(pid, signal.SIGKILL)
        for f in futures:
            f.result()

    failed = [s for s in results if s != 200]
    # The gateway retries a dropped connection on the other replica: none (or a handful,
    # for requests whose replica died mid-answer after the route refreshed) fail.
    assert len(results) > 20 and len(failed) <= 2, (len(results), failed)
    # The killed replica's job is retried and the endpoint gets back to two ready replicas.
    eventually(
        lambda: (e := team.get_endpoint("parts")).ready_replicas == 2 and e,
        timeout_s=60,
        what="the replica to be replaced",
    )


def _pid_of(team: Client, job_id: str) -> int:
    for e in reversed(team.job_events(job_id)):
        if e.data and "pid" in e.data:
            return int(e.data["pid"])
    raise AssertionError(f"no pid for {job_id}")


def test_update_rolls_to_a_new_version_without_failing_a_request_and_delete_drains(
    platform: Platform, team: Client, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    register_tiny(platform, factory, tmp_path, "parts", seed=3)
    v2 = register_tiny(platform, factory, tmp_path, "parts", seed=4)
    team.create_endpoint("parts", model="parts:1", cpus=0.5)
    team.wait_endpoint("parts", timeout_s=60)
    key = team_key(team)
    images = [image_bytes(seed=9)]
    statuses: list[int] = []
    stop = time.monotonic() + 4

    def load() -> None:
        while time.monotonic() < stop:
            statuses.append(predict(platform, key, "parts", images).status_code)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(load) for _ in range(3)]
        time.sleep(1)
        answer = team.update_endpoint("parts", model="parts:2")  # answers before the roll
        updated = team.wait_endpoint("parts", timeout_s=30)  # the controller switched
        for f in futures:
            f.result()
    assert answer.status == "updating"
    assert answer.rollout is not None and answer.rollout.model.version == 2
    assert updated.model.version == 2 and updated.rollout_error is None
    assert statuses and all(s == 200 for s in statuses), statuses
    label = predict(platform, key, "parts", images).json()["data"][0]["label"]
    assert label == expected_labels(v2, images)[0]

    replica_job = team.get_endpoint("parts").replica_jobs[0].job_id
    deleted = team.delete_endpoint("parts")
    assert deleted.deleted is True
    assert predict(platform, key, "parts", images).status_code == 404
    eventually(
        lambda: team.get_job(replica_job).status == "cancelled",
        timeout_s=30,
        what="the replica to stop",
    )


def test_rate_limit_answers_429_with_retry_after(
    platform: Platform, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    admin = Client(platform.url, platform.settings.admin_key_path.read_text().strip())
    key = admin.create_tenant("vision", rate_limit_rps=2).api_key
    team = Client(platform.url, key)
    register_tiny(platform, factory, tmp_path, "parts", seed=1)
    team.create_endpoint("parts", model="parts", cpus=0.5)
    team.wait_endpoint("parts", timeout_s=60)
    codes = [predict(platform, key, "parts", [image_bytes()]) for _ in range(6)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited and codes[0].status_code == 200
    assert int(limited[0].headers["Retry-After"]) >= 1
    assert limited[0].json()["error"]["code"] == "rate_limited"


def test_a_model_that_cannot_load_fails_the_endpoint_saying_why(
    platform: Platform, team: Client, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    with factory() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == "vision"))
    assert tenant_id is not None
    job_id, token = insert_running_job(factory, tenant_id)
    broken = {
        "model.onnx": (b"this is not an onnx graph", "onnx"),
        "labels.json": (json.dumps(labels()).encode(), "json"),
    }
    with httpx.Client(base_url=platform.url) as http:
        register(http, job_id, token, "broken", artifacts=broken)
    team.create_endpoint("broken", model="broken", cpus=0.5)
    with pytest.raises(ModelfabError) as err:
        team.wait_endpoint("broken", timeout_s=60)
    assert "failed" in err.value.message
    endpoint = team.get_endpoint("broken")
    assert endpoint.status == "failed" and endpoint.ready_replicas == 0
    assert endpoint.error["code"] == "model_load_failed"


def test_one_endpoint_serves_other_models_of_the_tenant_when_asked(
    platform: Platform, team: Client, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    register_tiny(platform, factory, tmp_path, "parts", seed=1)
    other = register_tiny(platform, factory, tmp_path, "welds", seed=5)
    team.create_endpoint("shared", model="parts", cpus=0.5)
    team.wait_endpoint("shared", timeout_s=60)
    images = [image_bytes(seed=s) for s in range(4)]
    url = f"{platform.url}/v1/endpoints/shared/predict"
    auth = {"Authorization": f"Bearer {team_key(team)}"}
    files = [("file", (f"img-{i}.png", b, "image/png")) for i, b in enumerate(images)]

    resp = httpx.post(url, headers=auth, files=files, params={"model": "welds:1", "top_k": 2})
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert [d["label"] for d in data] == expected_labels(other, images)
    assert all(len(d["top_k"]) == 2 for d in data)
    # Both models now sit in the replica, each under its own version.
    replica_url = team.get_endpoint("shared").replica_jobs[0].url
    assert replica_url is not None
    health = httpx.get(replica_url + "/health", headers=replica_auth(factory, replica_url))
    assert len(health.json()["models"]) == 2

    missing = httpx.post(url, headers=auth, files=files, params={"model": "nope"})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]
