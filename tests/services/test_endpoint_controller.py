"""The endpoint controller's decisions (pure, over rows built in memory) and its metering
of replica seconds (on the database): windows while a replica runs, the exact remainder
when its attempt ends."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.compute import lifecycle
from modelfab.compute.lifecycle import CANCELLED, FAILED, QUEUED, RUNNING
from modelfab.db.engine import transaction
from modelfab.db.models import Endpoint, EndpointReplica, Job, UsageRecord
from modelfab.services.endpoint_controller import (
    FAILED_REPLICAS_LIMIT,
    METER_WINDOW_S,
    EndpointController,
    plan_endpoint,
)
from modelfab.services.endpoints import EndpointService
from modelfab.services.jobs import JobService
from modelfab.services.tenants import Quota, create_tenant
from tests.registry_factories import insert_running_job

T0 = 1_000_000.0


def endpoint(replicas: int = 2, cpus: float = 1.0) -> Endpoint:
    return Endpoint(
        id="ep_1", replicas=replicas, cpus=cpus, gpus=0.0, memory_bytes=0, updated_at=T0
    )


def replica(n: int, status: str = RUNNING, *, ready: bool = True, cpus: float = 1.0) -> tuple:
    job = Job(
        id=f"job_{n}",
        status=status,
        attempt=1,
        cpus=cpus,
        gpus=0.0,
        memory_bytes=0,
        cancel_requested=False,
        finished_at=T0 + n if status in (FAILED, CANCELLED) else None,
        error={"message": "exited with code 1"} if status == FAILED else None,
    )
    row = EndpointReplica(
        job_id=job.id, endpoint_id="ep_1", attempt=1, ready_at=T0 if ready else None
    )
    return row, job


def test_missing_replicas_are_added_and_extras_stopped_newest_first() -> None:
    assert plan_endpoint(endpoint(3), [replica(1)]).add == 2
    plan = plan_endpoint(endpoint(1), [replica(1), replica(2), replica(3, QUEUED)])
    assert plan.add == 0 and plan.stop == ["job_2", "job_3"]
    # Ended replica jobs do not count: a dead one is replaced.
    assert plan_endpoint(endpoint(1), [replica(1, CANCELLED)]).add == 1


def test_new_resources_roll_one_ready_replica_at_a_time() -> None:
    old = [replica(1, cpus=1.0), replica(2, cpus=1.0)]
    # Resized to 2 CPUs: two new replicas are queued, the old keep serving meanwhile.
    plan = plan_endpoint(endpoint(2, cpus=2.0), old)
    assert plan.add == 2 and plan.stop == []
    # One new replica is ready: one old one may go.
    rows = [*old, replica(3, cpus=2.0), replica(4, cpus=2.0, ready=False)]
    assert plan_endpoint(endpoint(2, cpus=2.0), rows).stop == ["job_2"]
    rows = [*old, replica(3, cpus=2.0), replica(4, cpus=2.0)]
    assert plan_endpoint(endpoint(2, cpus=2.0), rows).stop == ["job_1", "job_2"]


def test_replicas_that_keep_failing_fail_the_endpoint_with_the_reason() -> None:
    failed = [replica(n, FAILED) for n in range(1, FAILED_REPLICAS_LIMIT + 1)]
    plan = plan_endpoint(endpoint(1), failed)
    assert plan.add == 0 and plan.error is not None
    assert "exited with code 1" in plan.error["message"]
    assert plan_endpoint(endpoint(1), failed[:-1]).add == 1


def test_replica_seconds_are_metered_in_windows_and_exactly_at_the_end(
    factory: sessionmaker[Session],
) -> None:
    tenant_id = str(create_tenant(factory, name="vision", quota=Quota()).id)
    job_id, _ = insert_running_job(factory, tenant_id)
    started = 5_000.0
    with transaction(factory) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.recipe, job.params, job.started_at = "serve", {"endpoint_id": "ep_x"}, started
    clock = [started + 2.5 * METER_WINDOW_S]
    service = EndpointService(factory, JobService(factory, None, node_ids=[]))
    controller = EndpointController(factory, service, clock=lambda: clock[0])
    controller.run_once()
    controller.run_once()  # a second pass adds nothing for the same windows
    assert replica_seconds(factory) == 2 * METER_WINDOW_S
    end = started + 2.5 * METER_WINDOW_S + 1.25
    with transaction(factory) as session:
        job = session.get(Job, job_id)
        assert job is not None
        lifecycle.end_attempt(session, job, outcome=CANCELLED, at=end)
    assert replica_seconds(factory) == end - started


def replica_seconds(factory: sessionmaker[Session]) -> float:
    with factory() as session:
        total = session.scalar(
            select(func.coalesce(func.sum(UsageRecord.quantity), 0.0)).where(
                UsageRecord.meter == "replica_seconds"
            )
        )
    return float(total or 0.0)
