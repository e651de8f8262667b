"""Replicas' reports: the controller's probe keeps each replica's latest `/health` answer
in memory, the endpoint's view shows it on its replica job named NAME:VERSION, and drops
it once stale or once the replica is no longer probed. Versions that are not the tenant's
never show."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.compute.lifecycle import CANCELLED
from modelfab.db.engine import transaction
from modelfab.db.models import EndpointReplica, Job
from modelfab.schemas.endpoints import AdapterStats, ModelStats, ReplicaStats
from modelfab.services.common import Principal
from modelfab.services.endpoint_controller import EndpointController
from modelfab.services.endpoints import EndpointService
from modelfab.services.jobs import JobService
from modelfab.serving.models import ModelCache
from modelfab.serving.replica_app import ReplicaServer, create_replica_app
from modelfab.settings import ControllerSettings
from tests.services.test_endpoint_controller import serving_endpoint, tenant_of
from tests.serving.factories import SECRET, DirLoader

MAX_AGE_S = 10.0


def member(factory: sessionmaker[Session]) -> Principal:
    return Principal(tenant_id=tenant_of(factory), tenant_name="vision", role="member",
                     key_id="key_1")  # fmt: skip


def service_at(factory: sessionmaker[Session], clock: list[float]) -> EndpointService:
    """The endpoint service with its reports book on `clock`."""
    service = EndpointService(factory, JobService(factory, None, node_ids=[]),
                              ControllerSettings(stats_max_age_s=MAX_AGE_S))  # fmt: skip
    service.replica_stats.clock = lambda: clock[0]
    return service


def test_the_probe_keeps_each_replicas_latest_report_until_stale_or_gone(
    factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """A real replica app on loopback serving the endpoint's classifier: its report reaches
    the endpoint's view; it ages out; a replica no longer running is forgotten."""
    serving_endpoint(factory, replicas=1)
    cache = ModelCache(DirLoader(tmp_path), budget_bytes=10**9, intra_op_threads=1)
    server = ReplicaServer(create_replica_app(cache, secret=SECRET))
    url = server.start()
    clock = [1_000.0]
    service = service_at(factory, clock)
    controller = EndpointController(factory, service, clock=lambda: clock[0])
    try:
        with transaction(factory) as session:
            row = session.scalars(select(EndpointReplica)).one()
            row.url, row.secret, row.ready_at = url, SECRET, None
            job_id = row.job_id
        assert service.get(member(factory), "parts").replica_jobs[0].stats is None  # not probed
        controller.run_once()  # probes (nothing loaded yet), then warms parts:1
        first = service.get(member(factory), "parts").replica_jobs[0].stats
        assert first is not None and first.models == [] and first.reported_at == 1_000.0
        clock[0] += 1
        controller.run_once()
    finally:
        server.stop(drain_s=1)
    [replica] = service.get(member(factory), "parts").replica_jobs
    assert replica.stats is not None and replica.stats.reported_at == 1_001.0
    [model] = replica.stats.models
    assert (model.version_id, model.model) == ("mv_1", "parts:1")
    assert (model.queue_depth, model.running, model.tokens_per_s) == (0, 0, None)

    clock[0] += MAX_AGE_S + 0.5  # the replica went quiet: its last report is stale
    assert service.get(member(factory), "parts").replica_jobs[0].stats is None
    clock[0] = 1_001.0
    assert service.replica_stats.get(job_id) is not None
    with transaction(factory) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = CANCELLED  # no longer probed: forgotten at the next pass
    controller.run_once()
    assert service.replica_stats.get(job_id) is None


def test_a_report_names_the_tenants_versions_and_hides_others(
    factory: sessionmaker[Session],
) -> None:
    """An engine may hold adapters that are not this tenant's (a shared base): their ids
    do not show; the tenant's own are named NAME:VERSION, pinned and resident as reported."""
    serving_endpoint(factory, replicas=1)
    clock = [5_000.0]
    service = service_at(factory, clock)
    with factory() as session:
        job_id = session.scalars(select(EndpointReplica.job_id)).one()

    def adapter(name: str, loaded: bool = True) -> AdapterStats:
        return AdapterStats(name=name, loaded=loaded, pinned=name == "mv_1", bytes=4096,
                            running=0)  # fmt: skip

    engine = ModelStats(
        version_id="mv_1", queue_depth=2, running=3, max_concurrency=4, tokens_per_s=12.5,
        window_s=10.0, generated_tokens=40, prompt_tokens=90, adapter_budget_bytes=1 << 20,
        adapters=[adapter("mv_1"), adapter("mv_2", loaded=False), adapter("mv_of_another")],
    )  # fmt: skip
    stranger = ModelStats(version_id="mv_of_another", queue_depth=0, running=0)
    report = ReplicaStats(reported_at=clock[0] - 1, outstanding=3, models=[engine, stranger])
    service.replica_stats.put(job_id, report)

    [replica] = service.get(member(factory), "parts").replica_jobs
    assert replica.stats is not None and replica.stats.outstanding == 3
    [model] = replica.stats.models
    assert (model.model, model.queue_depth, model.running, model.tokens_per_s) == (
        "parts:1", 2, 3, 12.5,
    )  # fmt: skip
    assert [(a.model, a.loaded, a.pinned) for a in model.adapters] == [
        ("parts:1", True, True),
        ("parts:2", False, False),
    ]
    listed = service.list_endpoints(member(factory))[0].replica_jobs[0].stats
    assert listed == replica.stats
