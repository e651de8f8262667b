"""Factories for registry tests: running attempts with a known token, and a worker's side of
registration driven over HTTP (the in-process TestClient or a real httpx client alike)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from modelfab.compute.lifecycle import QUEUED, RUNNING
from modelfab.db.engine import transaction
from modelfab.db.models import Job
from modelfab.ids import hash_secret, new_id, now

WEIGHTS = b"pretend torch state dict " * 40
ONNX = b"pretend onnx graph " * 30
# The in-process TestClient and an httpx.Client: both have `post(url, ...)`.
Http = Any

LABELS = b'{"0": "cat", "1": "dog"}'
ARTIFACTS: dict[str, tuple[bytes, str]] = {
    "weights.pt": (WEIGHTS, "pytorch"),
    "model.onnx": (ONNX, "onnx"),
    "labels.json": (LABELS, "json"),
}


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def start_attempt(factory: sessionmaker[Session], job_id: str) -> str:
    """Claim a queued job as the scheduler would (no devices, no process); returns the
    attempt's job token."""
    token = secrets.token_urlsafe(32)
    with transaction(factory) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == QUEUED, job
        job.status, job.attempt = RUNNING, job.attempt + 1
        job.token_hash, job.started_at = hash_secret(token), now()
    return token


def insert_running_job(
    factory: sessionmaker[Session],
    tenant_id: str,
    *,
    dataset_version_id: str | None = None,
    params: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """A `sleep` job already running attempt 1 with no process behind it (a scheduler
    ignores running jobs it did not launch). Returns (job id, token)."""
    token = secrets.token_urlsafe(32)
    at = now()
    with transaction(factory) as session:
        job = Job(
            id=new_id("job"),
            tenant_id=tenant_id,
            recipe="sleep",
            params=params or {"seconds": 0.0, "fail_attempts": 0, "exit_code": 0},
            dataset_version_id=dataset_version_id,
            gpus=0.0,
            cpus=1.0,
            memory_bytes=0,
            priority=0,
            max_attempts=1,
            status=RUNNING,
            attempt=1,
            failures=0,
            cancel_requested=False,
            token_hash=hash_secret(token),
            created_at=at,
            queued_at=at,
            started_at=at,
        )
        session.add(job)
    return job.id, token


def worker_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload_artifact(
    http: Http,
    job_id: str,
    token: str,
    name: str,
    content: bytes,
    fmt: str,
    digest: str | None = None,
) -> httpx.Response:
    """POST /v1/worker/jobs/{id}/artifacts as the worker does (its own sha256 unless given)."""
    return http.post(
        f"/v1/worker/jobs/{job_id}/artifacts",
        headers=worker_headers(token),
        data={"name": name, "format": fmt, "sha256": digest or sha(content)},
        files={"file": (name, content, "application/octet-stream")},
    )


def complete(
    http: Http,
    job_id: str,
    token: str,
    *,
    status: str = "succeeded",
    model: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
) -> httpx.Response:
    body = {"status": status, "attempt": 1, "result": result, "model": model}
    return http.post(f"/v1/worker/jobs/{job_id}/complete", headers=worker_headers(token), json=body)


def model_report(
    http: Http,
    job_id: str,
    token: str,
    name: str,
    *,
    artifacts: Mapping[str, tuple[bytes, str]] = ARTIFACTS,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Upload `artifacts` for the attempt; returns the `model` of its complete call."""
    records = []
    for artifact, (content, fmt) in artifacts.items():
        resp = upload_artifact(http, job_id, token, artifact, content, fmt)
        assert resp.status_code == 201, resp.text
        records.append(resp.json())
    return {
        "name": name,
        "task": "image-classification",
        "artifacts": records,
        "metrics": metrics or {"accuracy": 0.9},
        "base_model": "tiny-cnn",
        "extra": {"labels": ["cat", "dog"], "input_size": 64, **(extra or {})},
    }


def register(http: Http, job_id: str, token: str, name: str, **kwargs: Any) -> dict[str, Any]:
    """Upload artifacts and complete as succeeded with the model; returns the answer."""
    model = model_report(http, job_id, token, name, **kwargs)
    resp = complete(http, job_id, token, model=model)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())
