"""Endpoints for running attempts, authenticated by their job-scoped token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from modelfab.api.deps import Ctx, JobToken
from modelfab.schemas.common import ERRORS
from modelfab.schemas.worker import (
    ArtifactStored,
    AttemptEnded,
    EventsAccepted,
    JobSpec,
    ModelFiles,
    ReplicaAnnounced,
    ServingAnnounce,
    WorkerComplete,
    WorkerEvents,
)

router = APIRouter(prefix="/worker/jobs/{job_id}", tags=["worker"], responses=ERRORS)


@router.get("/spec")
def spec(job_id: str, ctx: Ctx, token: JobToken) -> JobSpec:
    return ctx.worker.spec(job_id, token)


@router.post("/events")
def events(job_id: str, body: WorkerEvents, ctx: Ctx, token: JobToken) -> EventsAccepted:
    return ctx.worker.add_events(job_id, token, body.events)


@router.post("/complete")
def complete(job_id: str, body: WorkerComplete, ctx: Ctx, token: JobToken) -> AttemptEnded:
    return ctx.worker.complete(job_id, token, body)


@router.post("/artifacts", status_code=201)
def upload_artifact(
    job_id: str,
    ctx: Ctx,
    token: JobToken,
    file: Annotated[UploadFile, File(description="The artifact's bytes.")],
    name: Annotated[str, Form(description="File name in the model, e.g. weights.pt.")],
    format: Annotated[str, Form(description="pytorch, onnx or json.")],
    sha256: Annotated[str, Form(description="sha256 of the bytes, checked on arrival.")],
) -> ArtifactStored:
    return ctx.worker.upload_artifact(
        job_id, token, name=name, format=format, sha256=sha256, stream=file.file
    )


@router.post("/serving")
def announce_serving(
    job_id: str, body: ServingAnnounce, ctx: Ctx, token: JobToken
) -> ReplicaAnnounced:
    """An endpoint replica's server answers: route requests to it, with its secret."""
    return ctx.endpoints.announce(job_id, token, url=body.url, secret=body.secret)


@router.get("/models/{version_id}")
def model_files(job_id: str, version_id: str, ctx: Ctx, token: JobToken) -> ModelFiles:
    """Where a model version of the replica's tenant keeps the files its served-model kind
    loads."""
    return ctx.endpoints.model_files(job_id, token, version_id)
