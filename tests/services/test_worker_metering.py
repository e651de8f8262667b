"""An attempt is metered from the moment its worker fetched its spec to the end its worker
saw, so a control-plane outage before the start or after the end is not billed."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.db.engine import transaction
from modelfab.db.models import Job, UsageRecord
from modelfab.schemas.worker import WorkerComplete
from modelfab.services import worker as worker_service
from modelfab.services.tenants import Quota, create_tenant
from modelfab.services.worker import WorkerService
from tests.registry_factories import insert_running_job


class Clock:
    def __init__(self, at: float):
        self.at = at

    def __call__(self) -> float:
        return self.at


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(1_000.0)
    monkeypatch.setattr(worker_service, "now", clock)
    return clock


def placed_job(factory: sessionmaker[Session], at: float) -> tuple[str, str]:
    tenant_id = str(create_tenant(factory, name="team", quota=Quota()).id)
    job_id, token = insert_running_job(factory, tenant_id)
    with transaction(factory) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.started_at = at  # placed by the scheduler at `at`
    return job_id, token


def cpu_seconds(factory: sessionmaker[Session], job_id: str) -> float:
    with factory() as session:
        rows = session.scalars(
            select(UsageRecord.quantity).where(
                UsageRecord.ref_id == job_id, UsageRecord.meter == "cpu_seconds"
            )
        ).all()
    assert len(rows) == 1
    return rows[0]


@pytest.mark.parametrize(
    ("ended_at", "billed"),
    [
        (1_012.0, 2.0),  # the worker's end, though the report arrived at 1,030
        (5_000.0, 20.0),  # a clock ahead: never past the report's arrival
        (900.0, 0.0),  # a clock behind: never before the start
        (None, 20.0),  # an old worker that sends no end: the arrival
    ],
)
def test_outage_before_the_spec_and_after_the_end_is_not_billed(
    factory: sessionmaker[Session], clock: Clock, ended_at: float | None, billed: float
) -> None:
    job_id, token = placed_job(factory, at=1_000.0)
    worker = WorkerService(factory, on_change=lambda: None)
    clock.at = 1_010.0  # the control plane was down for 10 s: the worker waited for its spec
    worker.spec(job_id, token)
    clock.at = 1_030.0  # it ended at 1,012 and waited 18 s to report it
    report = WorkerComplete(status="succeeded", attempt=1, ended_at=ended_at)
    worker.complete(job_id, token, report)
    assert cpu_seconds(factory, job_id) == pytest.approx(billed)  # cpus=1
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.started_at == 1_010.0
        assert job.finished_at == pytest.approx(1_010.0 + billed)


@pytest.mark.parametrize(
    ("result", "metered"),
    [
        ({"tokens_trained": 1234}, {"tokens_trained": 1234.0}),
        ({"tokens_trained": float("nan")}, {}),
        ({"tokens_trained": -1}, {}),
        ({"tokens_trained": True}, {}),
        ({"tokens_trained": "12"}, {}),
        ({"tokens_trained": 1e300}, {}),
        (None, {}),
    ],
)
def test_a_recipe_meters_only_finite_counts_it_declares(
    result: dict[str, object] | None, metered: dict[str, float]
) -> None:
    assert worker_service.recipe_usage("llm-finetune", result) == metered
    assert worker_service.recipe_usage("sleep", {"tokens_trained": 5}) == {}  # not declared
