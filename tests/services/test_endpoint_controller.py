"""The endpoint controller's decisions (pure, over rows built in memory) and its metering
of replica seconds (on the database): windows while a replica runs, the exact remainder
when its attempt ends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.compute import lifecycle
from modelfab.compute.lifecycle import CANCELLED, FAILED, QUEUED, RUNNING
from modelfab.db.engine import transaction
from modelfab.db.models import (
    Endpoint,
    EndpointReplica,
    Job,
    Model,
    ModelArtifact,
    ModelVersion,
    UsageRecord,
)
from modelfab.errors import InvalidRequest
from modelfab.gateway.types import ReplicaRoute
from modelfab.ids import now
from modelfab.schemas.endpoints import Endpoint as WireEndpoint
from modelfab.schemas.endpoints import EndpointUpdate
from modelfab.services.common import Principal
from modelfab.services.endpoint_controller import METER_WINDOW_S, EndpointController, Plan
from modelfab.services.endpoint_controller import plan_endpoint as plan_with_limit
from modelfab.services.endpoints import EndpointService
from modelfab.services.jobs import JobService
from modelfab.services.tenants import Quota, create_tenant
from modelfab.serving.models import ModelCache
from modelfab.serving.replica_app import ReplicaServer, create_replica_app
from modelfab.settings import ControllerSettings
from modelfab.tasks import IMAGE_CLASSIFICATION
from tests.registry_factories import insert_running_job
from tests.serving.factories import SECRET, DirLoader

T0 = 1_000_000.0
FAILED_REPLICAS_LIMIT = 3


def plan_endpoint(e: Endpoint, jobs: list[tuple[EndpointReplica, Job]]) -> Plan:
    return plan_with_limit(e, jobs, failed_limit=FAILED_REPLICAS_LIMIT)


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
        job_id=job.id,
        endpoint_id="ep_1",
        attempt=1,
        url=f"http://127.0.0.1:{8000 + n}",
        ready_at=T0 if ready else None,
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
    controller = EndpointController(
        factory, service, settings=ControllerSettings(), clock=lambda: clock[0]
    )
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


def serving_endpoint(factory: sessionmaker[Session], replicas: int) -> tuple[str, list[str]]:
    """A tenant with versions 1 and 2 of `parts` and an endpoint serving version 1 on
    `replicas` ready replicas (rows only). Returns (endpoint id, version ids)."""
    tenant_id = str(create_tenant(factory, name="vision", quota=Quota()).id)
    jobs = [insert_running_job(factory, tenant_id)[0] for _ in range(replicas)]
    at = now()
    with transaction(factory) as session:
        session.add(
            Model(
                id="mdl_1",
                tenant_id=tenant_id,
                name="parts",
                task=IMAGE_CLASSIFICATION,
                created_at=at,
            )
        )
        session.flush()
        for v in (1, 2):
            session.add(
                ModelVersion(id=f"mv_{v}", model_id="mdl_1", version=v, recipe="r",
                             recipe_version="1", params={}, metrics={}, extra={}, lineage={},
                             created_at=at)
            )  # fmt: skip
            session.flush()
            for name in ("model.onnx", "labels.json"):  # what makes a version servable
                session.add(
                    ModelArtifact(model_version_id=f"mv_{v}", name=name, format="x",
                                  uri=f"file:///{v}/{name}", sha256="0" * 64, size_bytes=1)
                )  # fmt: skip
        session.flush()
        session.add(
            Endpoint(id="ep_1", tenant_id=tenant_id, name="parts", model_ref="parts:1",
                     model_version_id="mv_1", replicas=replicas, gpus=0.0, cpus=1.0,
                     memory_bytes=0, max_batch_size=8, max_wait_ms=5.0, status="active",
                     error=None, created_at=at, updated_at=at)
        )  # fmt: skip
        session.flush()
        for n, job_id in enumerate(jobs):
            session.add(
                EndpointReplica(job_id=job_id, endpoint_id="ep_1", url=f"http://127.0.0.{n + 1}:9",
                                secret=f"secret-{n + 1}", attempt=1, ready_at=at,
                                created_at=at + n)
            )  # fmt: skip
    return "ep_1", ["mv_1", "mv_2"]


def roll(
    factory: sessionmaker[Session], warm: Callable[[ReplicaRoute, str], str | None]
) -> tuple[WireEndpoint, WireEndpoint]:
    """PATCH the endpoint to parts:2, then one controller pass; returns both answers.
    Nothing listens at the replicas' URLs: one failed health probe changes nothing."""
    service = EndpointService(factory, JobService(factory, None, node_ids=[]))
    tenant = Principal(tenant_id=tenant_of(factory), tenant_name="vision", role="member",
                       key_id="key_1")  # fmt: skip
    answer = service.update(tenant, "parts", EndpointUpdate(model="parts:2"))
    controller = EndpointController(factory, service, warm=warm)
    controller.run_once()
    return answer, service.get(tenant, "parts")


def tenant_of(factory: sessionmaker[Session]) -> str:
    with factory() as session:
        endpoint = session.get(Endpoint, "ep_1")
        assert endpoint is not None
        return endpoint.tenant_id


def test_an_update_answers_at_once_and_the_controller_switches_once_all_are_warm(
    factory: sessionmaker[Session],
) -> None:
    serving_endpoint(factory, replicas=2)
    warmed: list[tuple[str, str | None, str]] = []

    def warm(replica: ReplicaRoute, version_id: str) -> str | None:
        warmed.append((replica.url, replica.secret, version_id))
        return None

    answer, after = roll(factory, warm)
    assert answer.status == "updating" and answer.model.version == 1
    assert answer.rollout is not None and answer.rollout.model.version == 2
    assert warmed == [
        ("http://127.0.0.1:9", "secret-1", "mv_2"),
        ("http://127.0.0.2:9", "secret-2", "mv_2"),
    ]
    assert after.model.version == 2 and after.status == "ready"
    assert after.rollout is None and after.rollout_error is None


def test_a_version_a_replica_cannot_load_is_refused_and_the_old_one_keeps_serving(
    factory: sessionmaker[Session],
) -> None:
    serving_endpoint(factory, replicas=2)
    answer, after = roll(factory, lambda r, v: "not an ONNX graph" if "0.2:" in r.url else None)
    assert answer.status == "updating"
    assert after.model.version == 1 and after.status == "ready"
    assert after.rollout is None and after.rollout_error is not None
    assert after.rollout_error["code"] == "model_load_failed"
    assert "not an ONNX graph" in after.rollout_error["message"]


@pytest.mark.parametrize("field", ["replicas", "model", "max_batch_size", "cpus"])
def test_an_update_to_null_is_refused_and_changes_nothing(
    factory: sessionmaker[Session], field: str
) -> None:
    serving_endpoint(factory, replicas=2)
    service = EndpointService(factory, JobService(factory, None, node_ids=[]))
    tenant = Principal(tenant_id=tenant_of(factory), tenant_name="vision", role="member",
                       key_id="key_1")  # fmt: skip
    before = service.get(tenant, "parts")
    with pytest.raises(InvalidRequest) as caught:
        service.update(tenant, "parts", EndpointUpdate.model_validate({field: None}))
    assert caught.value.param == field
    assert service.get(tenant, "parts") == before


@pytest.mark.parametrize(("row_secret", "ready"), [(SECRET, True), (SECRET + "-not", False)])
def test_the_controller_probes_and_warms_a_new_replica_with_its_secret(
    factory: sessionmaker[Session], tmp_path: Path, row_secret: str, ready: bool
) -> None:
    """A real replica app on loopback (the header on the wire is what is tested): the
    announced secret gets its model loaded and the replica ready; with another secret the
    replica answers nothing, so it stays out of the routes and nothing is loaded."""
    serving_endpoint(factory, replicas=1)
    cache = ModelCache(DirLoader(tmp_path), budget_bytes=10**9, intra_op_threads=1)
    server = ReplicaServer(create_replica_app(cache, secret=SECRET))
    url = server.start()
    try:
        with transaction(factory) as session:
            row = session.scalars(select(EndpointReplica)).one()
            row.url, row.secret, row.ready_at = url, row_secret, None
        service = EndpointService(factory, JobService(factory, None, node_ids=[]))
        EndpointController(factory, service).run_once()
    finally:
        server.stop(drain_s=1)
    with factory() as session:
        row = session.scalars(select(EndpointReplica)).one()
        endpoint = session.get(Endpoint, "ep_1")
        assert endpoint is not None and endpoint.error is None
    assert (row.ready_at is not None) == ready
    assert cache.loaded() == (["mv_1"] if ready else [])
