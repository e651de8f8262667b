"""The job state machine: every change of a job's status goes through here, inside the
caller's transaction, together with its event, its freed devices and its usage records.

    validating -> queued -> running -> succeeded | failed | cancelled
                              \\-> queued (retry after a failure, or re-queue after a lost run)
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from modelfab import metering
from modelfab.db.models import Job, JobAllocation, JobEvent, UsageRecord

logger = logging.getLogger(__name__)

VALIDATING, QUEUED, RUNNING = "validating", "queued", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({VALIDATING, QUEUED, RUNNING})
STATUSES = (VALIDATING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)


class JobRef(NamedTuple):
    """What an event needs of its job, when the row itself is not loaded."""

    id: str
    attempt: int


def add_event(
    session: Session,
    job: Job | JobRef,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
    at: float,
) -> None:
    session.add(
        JobEvent(
            job_id=job.id,
            attempt=job.attempt,
            created_at=at,
            level=level,
            type=type,
            message=message,
            data=data,
        )
    )


def end_attempt(
    session: Session,
    job: Job,
    *,
    outcome: str,
    at: float,
    error: dict[str, Any] | None = None,
    retryable: bool = False,
    counts_as_failure: bool = True,
    result: dict[str, Any] | None = None,
) -> str:
    """Close the running attempt of `job`: meter it, free its devices, and move the job on.

    `outcome` is succeeded, failed or cancelled. A retryable failure goes back to `queued`
    while attempts remain; a failure that is not the job's fault (`counts_as_failure=False`,
    e.g. the control plane died) is re-queued without spending an attempt. Returns the new status.
    """
    assert job.status == RUNNING, job.status
    _meter_attempt(session, job, at)
    session.execute(delete(JobAllocation).where(JobAllocation.job_id == job.id))
    job.pid = None
    job.token_hash = None
    if outcome == FAILED and counts_as_failure:
        job.failures += 1
    requeue = outcome == FAILED and (
        not counts_as_failure or (retryable and job.failures < job.max_attempts)
    )
    if requeue and not job.cancel_requested:
        return _requeue(session, job, at, error or {})
    if job.cancel_requested and outcome != SUCCEEDED:
        outcome = CANCELLED
    job.status = outcome
    job.finished_at = at
    job.error = error if outcome == FAILED else None
    job.result = result
    level = "error" if outcome == FAILED else "info"
    message = f"Job {outcome}" + (f": {error['message']}" if error and outcome == FAILED else "")
    add_event(session, job, message, level=level, at=at, data={"status": outcome})
    return outcome


def _requeue(session: Session, job: Job, at: float, error: dict[str, Any]) -> str:
    reason = error.get("message", "attempt ended")
    job.status = QUEUED
    job.queued_at = at
    job.node_id = None
    job.cuda_visible_devices = None
    add_event(
        session,
        job,
        f"Attempt {job.attempt} ended ({reason}); queued again "
        f"({job.failures} of {job.max_attempts} attempts failed)",
        level="warning",
        at=at,
        data={"status": QUEUED, "error": error},
    )
    return QUEUED


def _meter_attempt(session: Session, job: Job, at: float) -> None:
    seconds = max(0.0, at - (job.started_at or at))
    ref = f"job:{job.id}:{job.attempt}"
    meters = [("cpu_seconds", job.cpus * seconds)]
    if job.gpus > 0:
        meters.append(("gpu_seconds", job.gpus * seconds))
    for meter, quantity in meters:
        metering.record(
            session,
            tenant_id=job.tenant_id,
            meter=meter,
            quantity=quantity,
            ref_type="job",
            ref_id=job.id,
            key=f"{ref}:{meter}",
            at=at,
        )
    if job.recipe == "serve":
        _meter_replica_remainder(session, job, seconds, at)


def _meter_replica_remainder(session: Session, job: Job, seconds: float, at: float) -> None:
    """An endpoint replica's seconds not yet metered in whole windows by the endpoint
    controller (keys `replica:<job>:<attempt>:<k>`), so the total is exact."""
    prefix = f"replica:{job.id}:{job.attempt}:"
    done = session.scalar(
        select(func.coalesce(func.sum(UsageRecord.quantity), 0.0)).where(
            UsageRecord.idempotency_key.like(prefix + "%"),
            UsageRecord.idempotency_key != prefix + "final",
        )
    )
    metering.record(
        session,
        tenant_id=job.tenant_id,
        meter="replica_seconds",
        quantity=max(0.0, seconds - float(done or 0.0)),
        ref_type="endpoint",
        ref_id=str(job.params.get("endpoint_id")),
        key=prefix + "final",
        at=at,
    )


def cancel_queued(session: Session, job: Job, at: float) -> None:
    assert job.status in (VALIDATING, QUEUED)
    job.status = CANCELLED
    job.cancel_requested = True
    job.finished_at = at
    add_event(session, job, "Job cancelled before it ran", at=at, data={"status": CANCELLED})
