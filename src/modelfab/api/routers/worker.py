"""Endpoints for running attempts, authenticated by their job-scoped token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from modelfab.api.deps import Ctx, JobToken
from modelfab.api.uploads import UNSUPPORTED, multipart_body, read_multipart
from modelfab.schemas.common import BODY, ERRORS, errors
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


@router.get("/spec", responses=errors(404))
def spec(job_id: str, ctx: Ctx, token: JobToken) -> JobSpec:
    return ctx.worker.spec(job_id, token)


@router.post("/events", responses={**BODY, **errors(404, 409)})
def events(job_id: str, body: WorkerEvents, ctx: Ctx, token: JobToken) -> EventsAccepted:
    return ctx.worker.add_events(job_id, token, body.events)


@router.post("/complete", responses={**BODY, **errors(404, 409)})
def complete(job_id: str, body: WorkerComplete, ctx: Ctx, token: JobToken) -> AttemptEnded:
    return ctx.worker.complete(job_id, token, body)


def attempt_token(job_id: str, ctx: Ctx, token: JobToken) -> str:
    """The job token, checked against the running attempt (before any body is read)."""
    ctx.worker.check_token(job_id, token)
    return token


@router.post(
    "/artifacts",
    status_code=201,
    responses={**UNSUPPORTED, **errors(400, 404, 409, 413)},
    openapi_extra=multipart_body(
        "Body_upload_artifact_v1_worker_jobs__job_id__artifacts_post",
        fields={
            "name": "File name in the model, e.g. weights.pt.",
            "format": "pytorch, onnx or json.",
            "sha256": "sha256 of the bytes, checked on arrival.",
        },
        files={"file": "The artifact's bytes."},
    ),
)
async def upload_artifact(
    job_id: str, request: Request, ctx: Ctx, token: Annotated[str, Depends(attempt_token)]
) -> ArtifactStored:
    """Multipart fields `name`, `format`, `sha256` and the bytes as `file`. The body is read
    only after the job token is checked."""
    async with read_multipart(
        request,
        scratch=ctx.settings.home / "tmp",
        files={"file": ctx.worker.max_artifact_bytes},
        fields=("name", "format", "sha256"),
    ) as form:
        with form.file("file").path.open("rb") as stream:
            return await run_in_threadpool(
                ctx.worker.upload_artifact,
                job_id,
                token,
                name=form.field("name"),
                format=form.field("format"),
                sha256=form.field("sha256"),
                stream=stream,
            )


@router.post("/serving", responses={**BODY, **errors(404, 409)})
def announce_serving(
    job_id: str, body: ServingAnnounce, ctx: Ctx, token: JobToken
) -> ReplicaAnnounced:
    """An endpoint replica's server answers: route requests to it, with its secret."""
    return ctx.endpoints.announce(job_id, token, url=body.url, secret=body.secret)


@router.get("/models/{version_id}/artifacts", responses=errors(403, 404))
def model_artifacts(job_id: str, version_id: str, ctx: Ctx, token: JobToken) -> ModelFiles:
    """Every artifact of a model version of the job's tenant, by name: a registered model
    the recipe starts from (llm-distill's teacher)."""
    return ctx.worker.model_artifacts(job_id, token, version_id)


@router.get("/models/{version_id}", responses=errors(403, 404))
def model_files(job_id: str, version_id: str, ctx: Ctx, token: JobToken) -> ModelFiles:
    """Where a model version of the replica's tenant keeps the files its served-model kind
    loads."""
    return ctx.endpoints.model_files(job_id, token, version_id)
