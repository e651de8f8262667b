"""The OpenAI fine-tuning API (`/v1/fine_tuning/jobs`): create, list, retrieve, cancel,
events, checkpoints, in OpenAI's shapes so that the `openai` client drives it unchanged.
Each fine-tuning job is an `llm-finetune` job (`ftjob-<hex>` is `job_<hex>`)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from modelfab.api.deps import Caller, Ctx
from modelfab.api.idempotency import IdemKey
from modelfab.schemas import limits
from modelfab.schemas.common import BODY, ERRORS, errors
from modelfab.schemas.fine_tuning import (
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobCreate,
    FineTuningJobEventList,
    FineTuningJobList,
)

router = APIRouter(tags=["fine-tuning"], responses=ERRORS)

Limit = Query(limits.DEFAULT_LIST_FINE_TUNING, ge=1, le=limits.MAX_LIST_FINE_TUNING)


@router.post("/fine_tuning/jobs", responses={**BODY, **errors(404, 409, 429)})
def create_fine_tuning_job(
    body: FineTuningJobCreate, ctx: Ctx, principal: Caller, idem: IdemKey
) -> FineTuningJob:
    """Queue an `llm-finetune` job (LoRA) of `model` on the dataset of `training_file`.
    404 names `training_file` or `model`; 422 the param that is wrong."""
    return ctx.fine_tuning.create(principal, body, idem=idem)


@router.get("/fine_tuning/jobs")
def list_fine_tuning_jobs(
    ctx: Ctx,
    principal: Caller,
    after: str | None = Query(None, max_length=64, description="A job id: the page after it."),
    limit: int = Limit,
) -> FineTuningJobList:
    return ctx.fine_tuning.list_jobs(principal, after=after, limit=limit)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}", responses=errors(404))
def retrieve_fine_tuning_job(fine_tuning_job_id: str, ctx: Ctx, principal: Caller) -> FineTuningJob:
    return ctx.fine_tuning.get(principal, fine_tuning_job_id)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel", responses=errors(404, 409))
def cancel_fine_tuning_job(fine_tuning_job_id: str, ctx: Ctx, principal: Caller) -> FineTuningJob:
    """A waiting job is cancelled at once; a running one shows `cancelled` once its worker
    stopped."""
    return ctx.fine_tuning.cancel(principal, fine_tuning_job_id)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/events", responses=errors(404))
def list_fine_tuning_events(
    fine_tuning_job_id: str,
    ctx: Ctx,
    principal: Caller,
    after: str | None = Query(None, max_length=64, description="An event id: older ones."),
    limit: int = Limit,
) -> FineTuningJobEventList:
    """Newest first; metrics events (`type` metrics) carry step, train_loss, val_loss..."""
    return ctx.fine_tuning.events(principal, fine_tuning_job_id, after=after, limit=limit)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", responses=errors(404))
def list_fine_tuning_checkpoints(
    fine_tuning_job_id: str,
    ctx: Ctx,
    principal: Caller,
    after: str | None = Query(None, max_length=64, description="A checkpoint id: older ones."),
    limit: int = Limit,
) -> FineTuningJobCheckpointList:
    """One per epoch, newest first."""
    return ctx.fine_tuning.checkpoints(principal, fine_tuning_job_id, after=after, limit=limit)
