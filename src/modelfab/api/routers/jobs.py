from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from modelfab.api.deps import Caller, Ctx
from modelfab.recipes import list_recipes
from modelfab.schemas import limits
from modelfab.schemas.common import ERRORS, List
from modelfab.schemas.jobs import Job, JobCreate, JobEvent, JobLogs, Recipe
from modelfab.services.jobs import JobRequest

router = APIRouter(tags=["jobs"], responses=ERRORS)


@router.post("/jobs", status_code=201, response_model=Job)
def create_job(body: JobCreate, ctx: Ctx, principal: Caller) -> dict[str, Any]:
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
    return ctx.jobs.create(principal, request)


@router.get("/jobs", response_model=List[Job])
def list_jobs(
    ctx: Ctx,
    principal: Caller,
    status: str | None = None,
    limit: int = Query(100, ge=1, le=limits.MAX_LIST_JOBS),
) -> dict[str, Any]:
    return {"object": "list", "data": ctx.jobs.list_jobs(principal, status=status, limit=limit)}


@router.get("/jobs/{job_id}", response_model=Job)
def get_job(job_id: str, ctx: Ctx, principal: Caller) -> dict[str, Any]:
    return ctx.jobs.get(principal, job_id)


@router.post("/jobs/{job_id}/cancel", response_model=Job)
def cancel_job(job_id: str, ctx: Ctx, principal: Caller) -> dict[str, Any]:
    return ctx.jobs.cancel(principal, job_id)


@router.get("/jobs/{job_id}/events", response_model=List[JobEvent])
def job_events(
    job_id: str,
    ctx: Ctx,
    principal: Caller,
    after: int = Query(0, ge=0),
    limit: int = Query(limits.DEFAULT_EVENTS_PAGE, ge=1, le=limits.MAX_EVENTS_PAGE),
) -> dict[str, Any]:
    events = ctx.jobs.events(principal, job_id, after=after, limit=limit)
    return {"object": "list", "data": events}


@router.get("/jobs/{job_id}/logs", response_model=JobLogs)
def job_logs(
    job_id: str,
    ctx: Ctx,
    principal: Caller,
    attempt: int | None = Query(None, ge=1),
    offset: int = Query(0, ge=0),
    limit: int = Query(limits.DEFAULT_LOG_CHUNK, ge=1, le=limits.MAX_LOG_CHUNK),
) -> dict[str, Any]:
    return ctx.jobs.logs(principal, job_id, attempt=attempt, offset=offset, limit=limit)


@router.get("/recipes")
def recipes(_: Caller) -> List[Recipe]:
    data = [
        Recipe(
            name=r.name,
            version=r.version,
            description=r.description,
            needs_dataset=r.needs_dataset,
            params=r.params.model_json_schema(),
        )
        for r in list_recipes()
    ]
    return List(data=data)
