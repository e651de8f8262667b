"""The job state machine: every change of a job's status goes through here, inside the
caller's transaction, together with its event, its freed devices and its usage records.

    validating -> queued -> running -> succeeded | failed | cancelled
         |           |         \\-> queued (retry after a failure, or re-queue after a lost run)
         \\-----------+-> cancelled (before it ran)

`compute.status.TRANSITIONS` declares the allowed moves once; a move outside it raises
IllegalTransition. The statuses and their table are re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from modelfab import metering
from modelfab.compute.status import (
    ACTIVE,
    LEASE_EXPIRED,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    JobStatus,
    check_transition,
)
from modelfab.db.models import Job, JobAllocation, JobEvent, UsageRecord

__all__ = [
    "ACTIVE",
    "CANCELLED",
    "FAILED",
    "QUEUED",
    "RUNNING",
    "STATUSES",
    "SUCCEEDED",
    "TERMINAL",
    "TRANSITIONS",
    "VALIDATING",
    "IllegalTransition",
    "JobRef",
    "JobStatus",
    "add_event",
    "admit",
    "cancel_queued",
    "check_transition",
    "claim",
    "end_attempt",
    "request_cancel",
    "requeue_lost",
]

logger = logging.getLogger(__name__)

# The module-level names other modules import; aliases of the members, not copies.
VALIDATING, QUEUED, RUNNING = JobStatus.VALIDATING, JobStatus.QUEUED, JobStatus.RUNNING
SUCCEEDED, FAILED, CANCELLED = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED
STATUSES: tuple[JobStatus, ...] = tuple(JobStatus)


def _move(job: Job, new: JobStatus) -> None:
    check_transition(job.status, new)
    job.status = new


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


def admit(session: Session, job: Job, at: float) -> None:
    """validating -> queued: the job passed validation and waits for a placement."""
    _move(job, QUEUED)
    job.queued_at = at
    add_event(session, job, "Job queued", at=at, data={"status": QUEUED})


def claim(
    session: Session,
    job_id: str,
    *,
    node_id: str,
    cuda_visible_devices: str | None,
    devices: Sequence[tuple[int, float]],
    token_hash: str,
    at: float,
) -> int | None:
    """queued -> running as one compare-and-set: start the job's next attempt on `node_id`,
    holding `devices` (device id, fraction). Returns the attempt number, or None when the
    job is no longer queued or a cancel was requested (another decision won)."""
    check_transition(QUEUED, RUNNING)
    attempt = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED, Job.cancel_requested.is_(False))
        .values(
            status=RUNNING,
            attempt=Job.attempt + 1,
            node_id=node_id,
            cuda_visible_devices=cuda_visible_devices,
            token_hash=token_hash,
            started_at=at,
            pid=None,
        )
        .returning(Job.attempt)
    )
    if attempt is None:
        return None
    for device_id, fraction in devices:
        session.add(JobAllocation(job_id=job_id, device_id=device_id, fraction=fraction))
    shown = cuda_visible_devices or "none"
    add_event(
        session,
        JobRef(job_id, int(attempt)),
        f"Attempt {attempt} placed on {node_id} (devices {shown})",
        at=at,
        data={"status": RUNNING, "node": node_id, "cuda_visible_devices": shown},
    )
    return int(attempt)


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
    usage: dict[str, float] | None = None,
) -> JobStatus:
    """Close the running attempt of `job`: meter it, free its devices, and move the job on.

    `outcome` is succeeded, failed or cancelled. A retryable failure goes back to `queued`
    while attempts remain; a failure that is not the job's fault (`counts_as_failure=False`,
    e.g. the control plane died, or an `error` coded LEASE_EXPIRED: the worker's report that
    it lost the control plane for its lease) is re-queued without spending an attempt.
    `usage` adds meters the attempt counted itself (e.g. tokens_trained), recorded with
    the attempt's seconds. Returns the new status. Raises IllegalTransition when the job is
    not running or `outcome` is no end.
    """
    ending = JobStatus(outcome)
    if ending not in TERMINAL:
        raise IllegalTransition(f"an attempt cannot end {outcome}", param="status")
    check_transition(job.status, ending)
    if error is not None and error.get("code") == LEASE_EXPIRED:
        counts_as_failure = False
    _meter_attempt(session, job, at, usage or {})
    session.execute(delete(JobAllocation).where(JobAllocation.job_id == job.id))
    job.pid = None
    job.token_hash = None
    if ending == FAILED and counts_as_failure:
        job.failures += 1
    requeue = ending == FAILED and (
        not counts_as_failure or (retryable and job.failures < job.max_attempts)
    )
    if requeue and not job.cancel_requested:
        return _requeue(session, job, at, error or {})
    if job.cancel_requested and ending != SUCCEEDED:
        ending = CANCELLED
    _move(job, ending)
    job.finished_at = at
    job.error = error if ending == FAILED else None
    job.result = result
    level = "error" if ending == FAILED else "info"
    message = f"Job {ending}" + (f": {error['message']}" if error and ending == FAILED else "")
    add_event(session, job, message, level=level, at=at, data={"status": ending})
    return ending


def _requeue(session: Session, job: Job, at: float, error: dict[str, Any]) -> JobStatus:
    reason = error.get("message", "attempt ended")
    _move(job, QUEUED)
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


def _meter_attempt(session: Session, job: Job, at: float, usage: dict[str, float]) -> None:
    seconds = max(0.0, at - (job.started_at or at))
    ref = f"job:{job.id}:{job.attempt}"
    meters = [("cpu_seconds", job.cpus * seconds)]
    if job.gpus > 0:
        meters.append(("gpu_seconds", job.gpus * seconds))
    meters += sorted(usage.items())
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


def requeue_lost(session: Session, job: Job, at: float) -> JobStatus:
    """running -> queued: the attempt's worker was gone after a control-plane restart.
    Not the job's fault, so no attempt is spent (a job with a cancel requested ends
    cancelled). Returns the new status."""
    return end_attempt(
        session,
        job,
        outcome=FAILED,
        at=at,
        error={"code": "lost", "message": "the worker was gone after a control-plane restart"},
        counts_as_failure=False,
    )


def request_cancel(
    session: Session,
    job: Job,
    at: float,
    *,
    message: str = "Cancel requested",
    level: str = "warning",
) -> None:
    """A running job: flag it (its status changes when its process ends, via
    `end_attempt`). Does nothing when a cancel was already requested."""
    if job.status != RUNNING:
        raise IllegalTransition(f"a {job.status} job has no attempt to cancel", param="status")
    if not job.cancel_requested:
        job.cancel_requested = True
        add_event(session, job, message, level=level, at=at)


def cancel_queued(session: Session, job: Job, at: float) -> None:
    """validating | queued -> cancelled: the job ends before it ran."""
    _move(job, CANCELLED)
    job.cancel_requested = True
    job.finished_at = at
    add_event(session, job, "Job cancelled before it ran", at=at, data={"status": CANCELLED})
