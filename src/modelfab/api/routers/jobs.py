from __future__ import annotations

from fastapi import APIRouter, Query

from modelfab.api.deps import Caller, Ctx
from modelfab.api.idempotency import IdemKey
from modelfab.schemas import limits
from modelfab.schemas.common import BODY, ERRORS, List, errors
from modelfab.schemas.jobs import Job, JobCreate, JobEvent, JobLogs, JobStatus, Recipe
from modelfab.services import jobs
from modelfab.services.jobs import JobRequest

router = APIRouter(tags=["jobs"], responses=ERRORS)


@router.post("/jobs", status_code=201, responses={**BODY, **errors(403, 404, 409, 429)})
def create_job(body: JobCreate, ctx: Ctx, principal: Caller, idem: IdemKey) -> Job:
    request = JobRequest(
        recipe=body.recipe,
        params=body.params,
        dataset=body.dataset,
        gpus=body.resources.gpus,
        cpus=body.resources.cpus,
        memory_bytes=body.resources.memory_bytes,
        priority=body.priority,
        max_attempts=body.max_attempts,
    )
    return ctx.jobs.create(principal, request, idem=idem)


@router.get("/jobs")
def list_jobs(
    ctx: Ctx,
    principal: Caller,
    status: JobStatus | None = None,
    limit: int = Query(limits.DEFAULT_LIST_JOBS, ge=1, le=limits.MAX_LIST_JOBS),
) -> List[Job]:
    return List(data=ctx.jobs.list_jobs(principal, status=status, limit=limit))


@router.get("/jobs/{job_id}", responses=errors(404))
def get_job(job_id: str, ctx: Ctx, principal: Caller) -> Job:
    return ctx.jobs.get(principal, job_id)


@router.post("/jobs/{job_id}/cancel", responses=errors(404, 409))
def cancel_job(job_id: str, ctx: Ctx, principal: Caller) -> Job:
    return ctx.jobs.cancel(principal, job_id)


@router.get("/jobs/{job_id}/events", responses=errors(404))
def job_events(
    job_id: str,
    ctx: Ctx,
    principal: Caller,
    after: int = Query(0, ge=0, le=limits.MAX_INT64),
    limit: int = Query(limits.DEFAULT_EVENTS_PAGE, ge=1, le=limits.MAX_EVENTS_PAGE),
) -> List[JobEvent]:
    return List(data=ctx.jobs.events(principal, job_id, after=after, limit=limit))


@router.get("/jobs/{job_id}/logs", responses=errors(404))
def job_logs(
    job_id: str,
    ctx: Ctx,
    principal: Caller,
    attempt: int | None = Query(None, ge=1, le=limits.MAX_COUNT),
    offset: int = Query(0, ge=0, le=limits.MAX_INT64),
    limit: int = Query(limits.DEFAULT_LOG_CHUNK, ge=1, le=limits.MAX_LOG_CHUNK),
) -> JobLogs:
    return ctx.jobs.logs(principal, job_id, attempt=attempt, offset=offset, limit=limit)


@router.get("/recipes")
def recipes(_: Caller) -> List[Recipe]:
    return List(data=jobs.recipes())
