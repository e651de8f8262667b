"""A job that registers several models (llm-distill's students): each its own version in the
transaction that ends the attempt, with lineage to the job and to the registered version it
was made from; all or none; and the artifacts of a registered version a recipe fetches."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.artifacts import ArtifactStore
from modelfab.db.models import Job, ModelVersion
from modelfab.errors import InvalidRequest
from modelfab.schemas.worker import WorkerComplete
from modelfab.services.common import Principal
from modelfab.services.registry import RegistryService
from modelfab.services.tenants import Quota, create_tenant
from modelfab.services.worker import WorkerService
from tests.registry_factories import WEIGHTS, insert_running_job, sha


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def worker(factory: sessionmaker[Session], store: ArtifactStore) -> WorkerService:
    return WorkerService(factory, on_change=lambda: None, artifacts=store)


def tenant(factory: sessionmaker[Session], name: str) -> str:
    return str(create_tenant(factory, name=name, quota=Quota()).id)


def chat_model(worker: WorkerService, job_id: str, token: str, name: str, **more: Any) -> Any:
    content = WEIGHTS + name.encode()
    stored = worker.upload_artifact(
        job_id, token, name="model.safetensors", format="safetensors", sha256=sha(content),
        stream=io.BytesIO(content),
    )  # fmt: skip
    return {"name": name, "task": "chat", "artifacts": [stored.model_dump(mode="json")], **more}


def complete(worker: WorkerService, job_id: str, token: str, **payload: Any) -> str:
    body = {"status": "succeeded", "attempt": 1, "result": {}, **payload}
    return str(worker.complete(job_id, token, WorkerComplete.model_validate(body)).status)


def registered(
    factory: sessionmaker[Session], worker: WorkerService, tenant_id: str, name: str
) -> str:
    job_id, token = insert_running_job(factory, tenant_id)
    assert complete(worker, job_id, token, model=chat_model(worker, job_id, token, name))
    with factory() as session:
        version = session.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id))
        assert version is not None
        return version.id


def test_one_job_registers_each_student_with_lineage_to_its_teacher(
    factory: sessionmaker[Session], worker: WorkerService, store: ArtifactStore
) -> None:
    team = tenant(factory, "team")
    teacher = registered(factory, worker, team, "bot")
    job_id, token = insert_running_job(factory, team)
    students = [
        chat_model(worker, job_id, token, f"bot-{n}l", parent_version_id=teacher) for n in (2, 1)
    ]
    assert complete(worker, job_id, token, models=students) == "succeeded"

    registry = RegistryService(factory, store)
    me = Principal(tenant_id=team, tenant_name="team", role="member", key_id="k")
    for name in ("bot-2l", "bot-1l"):
        version = registry.get(me, name)
        assert version.job_id == job_id and version.version == 1
        lineage = registry.lineage(me, name)
        assert lineage.parent_model is not None
        assert (lineage.parent_model.id, lineage.parent_model.ref) == (teacher, "bot:1")
        assert lineage.job.id == job_id
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.result is not None
        assert job.result["models"] == ["bot-2l:1", "bot-1l:1"]


def test_a_bad_model_among_several_registers_none(
    factory: sessionmaker[Session], worker: WorkerService
) -> None:
    team = tenant(factory, "team")
    other = registered(factory, worker, tenant(factory, "other"), "theirs")
    job_id, token = insert_running_job(factory, team)
    good = chat_model(worker, job_id, token, "small-2l")
    foreign = chat_model(worker, job_id, token, "small-1l", parent_version_id=other)
    assert complete(worker, job_id, token, models=[good, foreign]) == "failed"
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 1  # theirs

    job_id, token = insert_running_job(factory, team)
    twice = [chat_model(worker, job_id, token, "same")] * 2
    assert complete(worker, job_id, token, models=twice) == "failed"


def test_a_job_fetches_every_artifact_of_its_tenants_version_only(
    factory: sessionmaker[Session], worker: WorkerService
) -> None:
    team = tenant(factory, "team")
    teacher = registered(factory, worker, team, "bot")
    theirs = registered(factory, worker, tenant(factory, "other"), "theirs")
    job_id, token = insert_running_job(factory, team)
    files = worker.model_artifacts(job_id, token, teacher)
    assert files.task == "chat" and set(files.artifacts) == {"model.safetensors"}
    assert files.artifacts["model.safetensors"].sha256 == sha(WEIGHTS + b"bot")
    with pytest.raises(InvalidRequest):
        worker.model_artifacts(job_id, token, theirs)
