from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from modelfab.api.deps import Caller, Ctx
from modelfab.api.schemas import JobCreate
from modelfab.recipes import list_recipes
from modelfab.services.jobs import JobRequest

router = APIRouter(tags=["jobs"])


@router.post("/jobs", status_code=201)
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


@router.get("/jobs")
def list_jobs(
    ctx: Ctx, principal: Caller, status: str | None = None, limit: int = Query(100, ge=1, le=1000)
) -> dict[str, Any]:
    return {"object": "list", "data": ctx.jobs.list_jobs(principal, status=status, limit=limit)}


@router.get("/jobs/{job_id}")
def get_job(job_id: str, ctx: Ctx, principal: Caller) -> dict[str, Any]:
    return ctx.jobs.get(principal, job_id)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, ctx: Ctx, principal: Caller) -> dict[str, Any]:
    return ctx.jobs.cancel(principal, job_id)


@router.get("/jobs/{job_id}/events")
def job_events(
    job_id: str,
    ctx: Ctx,
    principal: Caller,
    after: int = Query(0, ge=0),
    limit: int = Query(500, ge=1, le=5000),
) -> dict[str, Any]:
    events = ctx.jobs.events(principal, job_id, after=after, limit=limit)
    return {"object": "list", "data": events}


@router.get("/jobs/{job_id}/logs")
def job_logs(
    job_id: str,
    ctx: Ctx,
    principal: Caller,
    attempt: int | None = Query(None, ge=1),
    offset: int = Query(0, ge=0),
    limit: int = Query(65536, ge=1, le=1 << 20),
) -> dict[str, Any]:
    return ctx.jobs.logs(principal, job_id, attempt=attempt, offset=offset, limit=limit)


@router.get("/recipes")
def recipes(_: Caller) -> dict[str, Any]:
    data = [
        {
            "name": r.name,
            "version": r.version,
            "description": r.description,
            "needs_dataset": r.needs_dataset,
            "params": r.params.model_json_schema(),
        }
        for r in list_recipes()
    ]
    return {"object": "list", "data": data}
