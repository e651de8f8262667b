"""Registration as the worker service does it: atomic with the attempt's end, one version per
job, refused (the job failing, saying why) when an artifact is missing or changed."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, func, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.artifacts import ArtifactStore
from modelfab.db.engine import transaction
from modelfab.db.models import Base, Job, Model, ModelArtifact, ModelVersion
from modelfab.errors import InvalidRequest, Unauthenticated
from modelfab.ids import now
from modelfab.schemas.worker import WorkerComplete
from modelfab.services.named import Ref
from modelfab.services.registry import parse_ref, register_version, verify_model
from modelfab.services.tenants import Quota, create_tenant
from modelfab.services.worker import WorkerService
from tests.registry_factories import WEIGHTS, insert_running_job, sha


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def worker(factory: sessionmaker[Session], store: ArtifactStore) -> WorkerService:
    return WorkerService(factory, on_change=lambda: None, artifacts=store)


@pytest.fixture
def tenant_id(factory: sessionmaker[Session]) -> str:
    return str(create_tenant(factory, name="vision", quota=Quota()).id)


def upload(
    worker: WorkerService, job_id: str, token: str, content: bytes = WEIGHTS
) -> dict[str, Any]:
    """Upload an artifact; returns the answer as the worker reads it (JSON) to report it."""
    stored = worker.upload_artifact(
        job_id,
        token,
        name="weights.pt",
        format="pytorch",
        sha256=sha(content),
        stream=io.BytesIO(content),
    )
    return stored.model_dump(mode="json")


def report(artifact: dict[str, Any], name: str = "clf", task: str = "image-classification") -> Any:
    return {"name": name, "task": task, "artifacts": [artifact], "metrics": {"accuracy": 1.0}}


def succeed(worker: WorkerService, job_id: str, token: str, model: Any) -> str:
    payload = {"status": "succeeded", "attempt": 1, "result": {"epochs": 3}, "model": model}
    return str(worker.complete(job_id, token, WorkerComplete.model_validate(payload)).status)


def job_row(factory: sessionmaker[Session], job_id: str) -> Job:
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def counts(factory: sessionmaker[Session]) -> tuple[int, int, int]:
    with factory() as session:
        return tuple(  # type: ignore[return-value]
            session.scalar(select(func.count()).select_from(t))
            for t in (Model, ModelVersion, ModelArtifact)
        )


def test_complete_registers_in_the_same_transaction(
    factory: sessionmaker[Session], worker: WorkerService, tenant_id: str
) -> None:
    job_id, token = insert_running_job(factory, tenant_id)
    artifact = upload(worker, job_id, token)
    assert succeed(worker, job_id, token, report(artifact)) == "succeeded"

    job = job_row(factory, job_id)
    assert job.result == {"epochs": 3, "model": "clf:1"}
    assert counts(factory) == (1, 1, 1)
    with factory() as session:
        version = session.scalar(select(ModelVersion))
        assert version is not None
        assert (version.job_id, version.version, version.recipe) == (job_id, 1, "sleep")
        assert version.lineage["attempt"] == 1
        assert version.lineage["dataset_ref"] is None


def test_retried_complete_cannot_make_a_second_version(
    factory: sessionmaker[Session], worker: WorkerService, tenant_id: str
) -> None:
    job_id, token = insert_running_job(factory, tenant_id)
    model = report(upload(worker, job_id, token))
    succeed(worker, job_id, token, model)
    with pytest.raises(Unauthenticated):
        succeed(worker, job_id, token, model)
    assert counts(factory) == (1, 1, 1)


def test_register_version_is_idempotent_per_job(
    factory: sessionmaker[Session], worker: WorkerService, store: ArtifactStore, tenant_id: str
) -> None:
    job_id, token = insert_running_job(factory, tenant_id)
    verified = verify_model(store, report(upload(worker, job_id, token)))
    with transaction(factory) as session:
        job = session.get(Job, job_id)
        assert job is not None
        first = register_version(session, job, verified, at=now())
        again = register_version(session, job, verified, at=now())
    assert first.id == again.id
    assert counts(factory) == (1, 1, 1)


def test_failed_completion_with_a_model_registers_nothing(
    factory: sessionmaker[Session], worker: WorkerService, tenant_id: str
) -> None:
    job_id, token = insert_running_job(factory, tenant_id)
    model = report(upload(worker, job_id, token))
    error = {"code": "below_gate", "message": "accuracy 0.4 < min_accuracy 0.9"}
    payload = {"status": "failed", "attempt": 1, "error": error, "model": model}
    assert worker.complete(job_id, token, WorkerComplete.model_validate(payload)).status == "failed"
    assert job_row(factory, job_id).error == error
    assert counts(factory) == (0, 0, 0)


def test_changed_artifact_fails_the_job(
    factory: sessionmaker[Session], worker: WorkerService, store: ArtifactStore, tenant_id: str
) -> None:
    job_id, token = insert_running_job(factory, tenant_id)
    artifact = upload(worker, job_id, token)
    path = store.path_for(artifact["sha256"])
    path.chmod(0o644)
    path.write_bytes(b"changed after upload")

    assert succeed(worker, job_id, token, report(artifact)) == "failed"
    job = job_row(factory, job_id)
    assert job.error is not None
    assert job.error["code"] == "model_not_registered"
    assert "no longer matches its sha256" in job.error["message"]
    assert job.result is None
    assert counts(factory) == (0, 0, 0)


def test_size_mismatch_and_other_task_fail_the_job(
    factory: sessionmaker[Session], worker: WorkerService, tenant_id: str
) -> None:
    job_id, token = insert_running_job(factory, tenant_id)
    artifact = {**upload(worker, job_id, token), "size_bytes": 1}
    assert succeed(worker, job_id, token, report(artifact)) == "failed"
    assert "bytes in the store" in job_row(factory, job_id).error["message"]  # type: ignore[index]

    first, token1 = insert_running_job(factory, tenant_id)
    succeed(worker, first, token1, report(upload(worker, first, token1)))
    second, token2 = insert_running_job(factory, tenant_id)
    model = report(upload(worker, second, token2), task="anomaly-detection")
    assert succeed(worker, second, token2, model) == "failed"
    error = job_row(factory, second).error
    assert error is not None and "is a image-classification model" in error["message"]
    assert counts(factory) == (1, 1, 1)  # only the first job's version; nothing partial


def test_concurrent_first_registrations_number_versions(
    factory: sessionmaker[Session], worker: WorkerService, tenant_id: str
) -> None:
    jobs = [insert_running_job(factory, tenant_id) for _ in range(4)]
    models = [report(upload(worker, j, t)) for j, t in jobs]
    barrier = threading.Barrier(len(jobs))
    outcomes: list[str] = []

    def run(i: int) -> None:
        barrier.wait()
        outcomes.append(succeed(worker, jobs[i][0], jobs[i][1], models[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert outcomes == ["succeeded"] * 4
    with factory() as session:
        numbers = sorted(session.scalars(select(ModelVersion.version)))
    assert numbers == [1, 2, 3, 4]
    assert counts(factory)[0] == 1


def test_parse_ref() -> None:
    assert parse_ref("clf") == Ref("clf")
    assert parse_ref("clf:12") == Ref("clf", version=12)
    assert parse_ref("clf@production") == Ref("clf", alias="production")
    for bad in ("clf:latest", "clf@Prod", "clf:0", f"clf:{2**63}", "clf:99999999999999999999999"):
        with pytest.raises(InvalidRequest):
            parse_ref(bad)


def test_store_less_worker_service_refuses_models(
    factory: sessionmaker[Session], tenant_id: str
) -> None:
    plain = WorkerService(factory, on_change=lambda: None)
    job_id, token = insert_running_job(factory, tenant_id)
    with pytest.raises(InvalidRequest):
        upload(plain, job_id, token)
    ghost: dict[str, Any] = {"name": "w.pt", "format": "pytorch", "uri": "file:///x"}
    ghost.update(sha256=sha(b""), size_bytes=0)
    assert succeed(plain, job_id, token, report(ghost)) == "failed"


def test_migrations_build_the_registry_tables(engine: Engine) -> None:
    """The schema the session's migrations built (from an empty database) is the models'."""
    tables = set(inspect(engine).get_table_names())
    assert {"models", "model_versions", "model_artifacts", "model_aliases"} <= tables
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
