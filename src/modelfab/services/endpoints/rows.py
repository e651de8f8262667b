"""Endpoint and replica rows as the commands, the replica calls, the route view and the
controller read them, with the one definition of a ready replica."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelfab.compute import lifecycle
from modelfab.compute.lifecycle import QUEUED, RUNNING, VALIDATING
from modelfab.db.models import Endpoint, EndpointReplica, Job
from modelfab.errors import NotFound
from modelfab.services.common import Principal

ACTIVE, DELETING = "active", "deleting"


def is_ready(r: EndpointReplica, j: Job) -> bool:
    """A replica takes requests: its job runs and is not stopping, and the current attempt
    announced its URL and loaded the endpoint's model. The only definition of "ready":
    the gateway's routes, the API's counts and the controller's decisions all use it."""
    return (
        j.status == RUNNING
        and not j.cancel_requested
        and r.attempt == j.attempt
        and r.url is not None
        and r.ready_at is not None
    )


def replicas_with_jobs(session: Session, endpoint_id: str) -> list[tuple[EndpointReplica, Job]]:
    """An endpoint's replica rows with their jobs, oldest first."""
    rows = session.execute(
        select(EndpointReplica, Job)
        .join(Job, Job.id == EndpointReplica.job_id)
        .where(EndpointReplica.endpoint_id == endpoint_id)
        .order_by(EndpointReplica.created_at)
    ).all()
    return [(r, j) for r, j in rows]


def ready_replicas(session: Session, endpoint_id: str) -> list[EndpointReplica]:
    return [r for r, j in replicas_with_jobs(session, endpoint_id) if is_ready(r, j)]


def replica_jobs(session: Session, endpoint_id: str) -> list[Job]:
    return [j for _, j in replicas_with_jobs(session, endpoint_id)]


def cancel_replica(session: Session, job: Job, at: float) -> None:
    """Stop a replica job: a queued one is cancelled, a running one asked to stop."""
    if job.status in (VALIDATING, QUEUED):
        lifecycle.cancel_queued(session, job, at)
    elif job.status == RUNNING:
        lifecycle.request_cancel(session, job, at, message="Replica stopping", level="info")


def own(session: Session, principal: Principal, name: str, lock: bool = False) -> Endpoint:
    """The caller's endpoint `name`; raises NotFound (also for other tenants' endpoints)."""
    stmt = select(Endpoint).where(Endpoint.tenant_id == principal.tenant_id, Endpoint.name == name)
    endpoint = session.scalar(stmt.with_for_update() if lock else stmt)
    if endpoint is None:
        raise NotFound(
            f"no endpoint named {name!r}; list yours with `modelfab endpoints list`", param="name"
        )
    return endpoint
