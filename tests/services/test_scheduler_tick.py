"""The scheduler's decisions, driven tick by tick over the state store.

`FakeExecutor` records launches and lets each test decide when an attempt exits: it is a
test double for the decision logic only (the local executor's real processes are tested
with it). `Clock` makes started/ended times, and so metered usage, exact."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab import metering
from modelfab.compute import lifecycle
from modelfab.compute.executors.base import Executor, ExitInfo, LaunchSpec, LogChunk
from modelfab.compute.pool import detect_node, register_node
from modelfab.compute.scheduler.loop import Scheduler, SchedulerConfig
from modelfab.compute.status import LEASE_EXPIRED
from modelfab.db.engine import transaction
from modelfab.db.models import Device, Job, JobAllocation, JobEvent, UsageRecord
from modelfab.errors import Conflict, InvalidRequest, Unauthenticated
from modelfab.schemas.worker import WorkerComplete, WorkerEvent, WorkerEvents
from modelfab.services.common import Principal
from modelfab.services.jobs import JobRequest, JobService
from modelfab.services.tenants import Quota, create_tenant
from modelfab.services.worker import WorkerService

GRACE_S = 1.5


class FakeExecutor(Executor):
    """Records launches and cancels; an attempt runs until the test calls `exit()`."""

    def __init__(self) -> None:
        self.launched: list[LaunchSpec] = []
        self.cancels: list[tuple[str, float]] = []
        self._exits: dict[str, ExitInfo] = {}
        self.refuse_launch: OSError | None = None

    def launch(self, spec: LaunchSpec) -> int:
        if self.refuse_launch is not None:
            raise self.refuse_launch
        self.launched.append(spec)
        return 40_000 + len(self.launched)

    def poll(self, job_id: str) -> ExitInfo | None:
        return self._exits.pop(job_id, None)

    def cancel(self, job_id: str, grace_s: float) -> None:
        self.cancels.append((job_id, grace_s))

    def logs(self, job_id: str, attempt: int, offset: int, limit: int) -> LogChunk:
        return LogChunk("", offset, offset)

    def exit(self, job_id: str, code: int) -> None:
        """The attempt of `job_id` ends with `code`; the next poll reports it."""
        self._exits[job_id] = ExitInfo(code, f"exited with code {code}")

    def spec_of(self, job_id: str, attempt: int = 1) -> LaunchSpec:
        [spec] = [s for s in self.launched if (s.job_id, s.attempt) == (job_id, attempt)]
        return spec


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    factory: sessionmaker[Session]
    executor: FakeExecutor
    clock: Clock
    scheduler: Scheduler
    jobs: JobService
    node_id: str

    def tenant(self, name: str, **quota: Any) -> Principal:
        t = create_tenant(self.factory, name=name, quota=Quota(**quota))
        return Principal(tenant_id=t.id, tenant_name=name, role="member", key_id="key_test")

    def submit(self, who: Principal, **request: Any) -> str:
        return self.jobs.create(who, JobRequest(recipe="sleep", **request)).id

    def job(self, job_id: str) -> Job:
        with self.factory() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    def status(self, *job_ids: str) -> list[str]:
        return [self.job(j).status for j in job_ids]

    def allocations(self, job_id: str) -> list[tuple[int, float]]:
        with self.factory() as session:
            rows = session.execute(
                select(Device.index, JobAllocation.fraction)
                .join(Device, Device.id == JobAllocation.device_id)
                .where(JobAllocation.job_id == job_id)
                .order_by(Device.index)
            ).all()
        return [(i, f) for i, f in rows]

    def events(self, job_id: str) -> list[str]:
        with self.factory() as session:
            return list(
                session.scalars(
                    select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
                )
            )

    def usage(self, job_id: str) -> dict[str, tuple[float, str]]:
        with self.factory() as session:
            rows = session.scalars(select(UsageRecord).where(UsageRecord.ref_id == job_id)).all()
        return {r.meter: (r.quantity, r.idempotency_key) for r in rows}

    def new_scheduler(self, executor: FakeExecutor) -> Scheduler:
        """A scheduler as a restarted control plane would build it."""
        return make_scheduler(self.factory, executor, self.node_id, self.clock)


def make_scheduler(
    factory: sessionmaker[Session], executor: FakeExecutor, node_id: str, clock: Clock
) -> Scheduler:
    config = SchedulerConfig(api_url="http://127.0.0.1:9", cancel_grace_s=GRACE_S)
    return Scheduler(factory, executor, node_ids=[node_id], config=config, clock=clock)


@pytest.fixture
def world(factory: sessionmaker[Session], tmp_path: Path) -> World:
    """One node with 2 fake GPUs and 4 CPU slots, a fake executor and a scheduler."""
    node = detect_node(tmp_path, fake_gpus=2, cpus=4)
    register_node(factory, node, executor="fake")
    executor = FakeExecutor()
    clock = Clock()
    scheduler = make_scheduler(factory, executor, node.id, clock)
    jobs = JobService(factory, executor, node_ids=[node.id])
    return World(factory, executor, clock, scheduler, jobs, node.id)


# --------------------------------------------------------------------------- placement


def test_tick_places_fractions_best_fit(world: World) -> None:
    who = world.tenant("vision")
    half_a = world.submit(who, gpus=0.5)
    half_b = world.submit(who, gpus=0.5)
    whole = world.submit(who, gpus=1)
    cpu_only = world.submit(who)

    stats = world.scheduler.tick()

    assert stats.placed == 4
    assert world.status(half_a, half_b, whole, cpu_only) == ["running"] * 4
    visible = {s.job_id: s.cuda_visible_devices for s in world.executor.launched}
    assert visible == {half_a: "0", half_b: "0", whole: "1", cpu_only: ""}
    assert world.allocations(half_a) == [(0, 0.5)]
    assert world.allocations(half_b) == [(0, 0.5)]
    assert world.allocations(whole) == [(1, 1.0)]
    assert world.allocations(cpu_only) == []
    for job_id in (half_a, half_b, whole):
        job = world.job(job_id)
        assert (job.node_id, job.cuda_visible_devices) == (world.node_id, visible[job_id])
    assert world.scheduler.tick().placed == 0
    assert len(world.executor.launched) == 4


def test_launch_spec_carries_attempt_and_token(world: World) -> None:
    job_id = world.submit(world.tenant("vision"), gpus=1)
    world.scheduler.tick()

    spec = world.executor.spec_of(job_id)
    assert spec.attempt == 1
    assert spec.api_url == "http://127.0.0.1:9"
    job = world.job(job_id)
    assert job.attempt == 1
    assert job.started_at == world.clock.now
    assert job.pid == 40_001
    assert len(spec.token) >= 32
    assert job.token_hash == hashlib.sha256(spec.token.encode()).hexdigest()
    assert f"Attempt 1 placed on {world.node_id} (devices 0)" in world.events(job_id)


def test_tenant_quota_limits_running_jobs(world: World) -> None:
    who = world.tenant("vision", max_gpus=1)
    flaky = world.submit(who, gpus=0.5, max_attempts=2)
    steady = world.submit(who, gpus=0.5)
    waiting = world.submit(who, gpus=0.5)

    world.scheduler.tick()
    assert world.status(flaky, steady, waiting) == ["running", "running", "queued"]

    # The freed half GPU goes back to the oldest queued job: the retried one.
    world.executor.exit(flaky, 1)
    stats = world.scheduler.tick()
    assert (stats.ended, stats.placed) == (1, 1)
    job = world.job(flaky)
    assert (job.status, job.failures, job.attempt) == ("running", 1, 2)
    assert any("queued again (1 of 2 attempts failed)" in m for m in world.events(flaky))
    assert world.status(steady, waiting) == ["running", "queued"]

    # Once the retries are spent, the waiting job gets the capacity.
    world.executor.exit(flaky, 1)
    world.scheduler.tick()
    assert world.status(flaky, steady, waiting) == ["failed", "running", "running"]
    assert world.executor.spec_of(waiting).cuda_visible_devices == "0"


def test_retries_exhausted_fail_the_job(world: World) -> None:
    job_id = world.submit(world.tenant("vision"), max_attempts=2)
    world.scheduler.tick()
    world.executor.exit(job_id, 1)
    world.scheduler.tick()
    job = world.job(job_id)
    assert (job.status, job.failures, job.attempt) == ("running", 1, 2)

    world.executor.exit(job_id, 1)
    world.scheduler.tick()

    job = world.job(job_id)
    assert (job.status, job.failures, job.attempt) == ("failed", 2, 2)
    assert job.error is not None
    assert job.error["code"] == "process_exited"
    assert job.error["exit_code"] == 1
    assert job.finished_at == world.clock.now
    assert job.token_hash is None
    assert world.events(job_id)[-1].startswith("Job failed")
    assert world.scheduler.tick().placed == 0
    assert len(world.executor.launched) == 2


def test_clean_exit_without_report_still_counts_as_failure(world: World) -> None:
    job_id = world.submit(world.tenant("vision"), max_attempts=1)
    world.scheduler.tick()
    world.executor.exit(job_id, 0)
    world.scheduler.tick()
    job = world.job(job_id)
    assert job.status == "failed"
    assert job.error is not None
    assert "without reporting" in job.error["message"]


def test_launch_error_requeues_the_job(world: World) -> None:
    job_id = world.submit(world.tenant("vision"), gpus=1, max_attempts=2)
    world.executor.refuse_launch = OSError("no python here")
    world.scheduler.tick()
    job = world.job(job_id)
    assert (job.status, job.failures, job.attempt) == ("queued", 1, 1)
    assert job.error is None
    assert any("no python here" in m for m in world.events(job_id))
    assert world.allocations(job_id) == []

    world.executor.refuse_launch = None
    assert world.scheduler.tick().placed == 1
    assert world.executor.spec_of(job_id, attempt=2).cuda_visible_devices == "0"


def test_priority_goes_first_when_only_one_fits(world: World) -> None:
    who = world.tenant("vision")
    low = world.submit(who, cpus=4, priority=0)
    high = world.submit(who, cpus=4, priority=5)

    world.scheduler.tick()

    assert world.status(low, high) == ["queued", "running"]
    assert [s.job_id for s in world.executor.launched] == [high]


# --------------------------------------------------------------------------- metering


def test_ended_attempt_is_metered_once(world: World) -> None:
    job_id = world.submit(world.tenant("vision"), gpus=0.5, cpus=2)
    world.scheduler.tick()
    world.clock.advance(10.0)
    world.executor.exit(job_id, 1)
    world.scheduler.tick()

    metered = world.usage(job_id)
    assert metered["cpu_seconds"] == pytest.approx((20.0, f"job:{job_id}:1:cpu_seconds"))
    assert metered["gpu_seconds"] == pytest.approx((5.0, f"job:{job_id}:1:gpu_seconds"))

    job = world.job(job_id)
    with transaction(world.factory) as session:
        for quantity in (20.0, 999.0):
            metering.record(
                session,
                tenant_id=job.tenant_id,
                meter="cpu_seconds",
                quantity=quantity,
                ref_type="job",
                ref_id=job_id,
                key=f"job:{job_id}:1:cpu_seconds",
            )
    with world.factory() as session:
        count = session.scalar(select(func.count()).select_from(UsageRecord))
    assert count == 2
    assert world.usage(job_id)["cpu_seconds"][0] == pytest.approx(20.0)


def test_cpu_only_attempt_has_no_gpu_meter(world: World) -> None:
    job_id = world.submit(world.tenant("vision"), max_attempts=1)
    world.scheduler.tick()
    world.clock.advance(3.0)
    world.executor.exit(job_id, 2)
    world.scheduler.tick()
    assert set(world.usage(job_id)) == {"cpu_seconds"}
    assert world.usage(job_id)["cpu_seconds"][0] == pytest.approx(3.0)


def test_usage_record_refuses_unknown_meter(world: World) -> None:
    who = world.tenant("vision")
    with pytest.raises(ValueError, match="meter"), transaction(world.factory) as session:
        metering.record(
            session,
            tenant_id=who.tenant_id,
            meter="parsecs",
            quantity=1,
            ref_type="job",
            ref_id="x",
            key="k",
        )


# --------------------------------------------------------------------------- cancel


def test_cancel_running_job_signals_then_ends_cancelled(world: World) -> None:
    who = world.tenant("vision")
    job_id = world.submit(who, gpus=1)
    world.scheduler.tick()

    out = world.jobs.cancel(who, job_id)
    assert (out.status, out.cancel_requested) == ("running", True)
    assert world.executor.cancels == []

    world.scheduler.tick()
    assert world.executor.cancels == [(job_id, GRACE_S)]
    world.scheduler.tick()
    assert world.executor.cancels == [(job_id, GRACE_S)]  # signalled once per attempt
    assert world.job(job_id).status == "running"
    assert world.allocations(job_id) == [(0, 1.0)]

    world.clock.advance(2.0)
    world.executor.exit(job_id, -15)
    world.scheduler.tick()

    job = world.job(job_id)
    assert (job.status, job.failures) == ("cancelled", 0)
    assert job.error is None
    assert world.allocations(job_id) == []
    assert "Cancel requested" in world.events(job_id)
    assert world.events(job_id)[-1] == "Job cancelled"
    assert world.usage(job_id)["gpu_seconds"][0] == pytest.approx(2.0)

    again = world.jobs.cancel(who, job_id)
    assert again.status == "cancelled"


def test_cancel_frees_capacity_for_the_next_job(world: World) -> None:
    who = world.tenant("vision")
    first = world.submit(who, gpus=2)
    second = world.submit(who, gpus=2)
    world.scheduler.tick()
    assert world.status(first, second) == ["running", "queued"]

    world.jobs.cancel(who, first)
    world.scheduler.tick()
    world.executor.exit(first, -15)
    world.scheduler.tick()
    assert world.status(first, second) == ["cancelled", "running"]
    assert world.executor.spec_of(second).cuda_visible_devices == "0,1"


# --------------------------------------------------------------------------- recover


def test_recover_requeues_lost_attempt_without_a_failure(world: World) -> None:
    who = world.tenant("vision")
    job_id = world.submit(who, gpus=0.5)
    world.scheduler.tick()
    assert world.status(job_id) == ["running"]

    # The control plane restarts; the attempt's process did not survive.
    restarted = FakeExecutor()
    scheduler = world.new_scheduler(restarted)
    scheduler.recover()

    job = world.job(job_id)
    assert (job.status, job.failures, job.attempt) == ("queued", 0, 1)
    assert (job.node_id, job.token_hash, job.pid) == (None, None, None)
    assert world.allocations(job_id) == []
    last = world.events(job_id)[-1]
    assert "restart" in last and "queued again" in last

    scheduler.tick()
    assert restarted.spec_of(job_id, attempt=2).cuda_visible_devices == "0"
    assert world.job(job_id).failures == 0


def test_recover_queues_jobs_left_validating(world: World) -> None:
    who = world.tenant("vision")
    job_id = world.submit(who)
    with transaction(world.factory) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = lifecycle.VALIDATING
    world.scheduler.recover()
    assert world.status(job_id) == ["queued"]


def test_recover_ends_lost_attempt_of_cancelled_job(world: World) -> None:
    who = world.tenant("vision")
    job_id = world.submit(who)
    world.scheduler.tick()
    world.jobs.cancel(who, job_id)
    world.new_scheduler(FakeExecutor()).recover()
    job = world.job(job_id)
    assert (job.status, job.failures) == ("cancelled", 0)


# --------------------------------------------------------------------------- worker


@pytest.fixture
def worker(world: World) -> WorkerService:
    return WorkerService(world.factory, on_change=world.scheduler.wake)


def test_worker_reads_spec_posts_events_and_completes(world: World, worker: WorkerService) -> None:
    job_id = world.submit(world.tenant("vision"), gpus=0.5, params={"seconds": 2})
    world.scheduler.tick()
    token = world.executor.spec_of(job_id).token

    spec = worker.spec(job_id, token)
    assert spec.job_id == job_id
    assert spec.attempt == 1
    assert spec.recipe == "sleep"
    assert spec.params["seconds"] == 2.0
    assert spec.cuda_visible_devices == "0"
    assert spec.resources.gpus == 0.5

    ack = worker.add_events(
        job_id,
        token,
        [
            WorkerEvent(message="step 1", type="metrics", data={"loss": 0.5}),
            WorkerEvent(message="odd", level="shouting", type="gossip"),
        ],
    )
    assert (ack.accepted, ack.cancel_requested) == (2, False)
    with world.factory() as session:
        rows = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
    assert [(e.message, e.type, e.level) for e in rows[-2:]] == [
        ("step 1", "metrics", "info"),
        ("odd", "message", "info"),
    ]
    assert rows[-2].data == {"loss": 0.5}

    world.clock.advance(4.0)
    done = worker.complete(job_id, token, WorkerComplete(status="succeeded", result={"slept_s": 2}))
    assert done.status == "succeeded"
    job = world.job(job_id)
    assert (job.status, job.result, job.token_hash) == ("succeeded", {"slept_s": 2}, None)
    assert world.allocations(job_id) == []
    assert set(world.usage(job_id)) == {"cpu_seconds", "gpu_seconds"}

    with pytest.raises(Unauthenticated):
        worker.complete(job_id, token, WorkerComplete(status="failed"))
    with pytest.raises(Unauthenticated):
        worker.spec(job_id, token)

    # The process exits after reporting: the reported outcome stands.
    world.executor.exit(job_id, 0)
    world.scheduler.tick()
    assert world.job(job_id).status == "succeeded"


def test_worker_with_wrong_token_is_refused(world: World, worker: WorkerService) -> None:
    job_id = world.submit(world.tenant("vision"))
    with pytest.raises(Unauthenticated):
        worker.spec(job_id, "anything")  # not running yet: no token is valid
    world.scheduler.tick()
    token = world.executor.spec_of(job_id).token

    with pytest.raises(Unauthenticated):
        worker.spec(job_id, token + "x")
    with pytest.raises(Unauthenticated):
        worker.add_events(job_id, "wrong", [WorkerEvent(message="hi")])
    with pytest.raises(Unauthenticated):
        worker.complete(job_id, "wrong", WorkerComplete(status="succeeded"))
    with pytest.raises(Unauthenticated):
        worker.spec("job_other", token)
    assert world.status(job_id) == ["running"]
    assert "hi" not in world.events(job_id)


def test_worker_token_of_an_old_attempt_is_refused(world: World, worker: WorkerService) -> None:
    job_id = world.submit(world.tenant("vision"))
    world.scheduler.tick()
    old = world.executor.spec_of(job_id, attempt=1).token
    world.executor.exit(job_id, 1)
    world.scheduler.tick()
    new = world.executor.spec_of(job_id, attempt=2).token

    with pytest.raises(Unauthenticated):
        worker.complete(job_id, old, WorkerComplete(status="succeeded"))
    with pytest.raises(Conflict):
        worker.complete(job_id, new, WorkerComplete(status="succeeded", attempt=1))
    assert (
        worker.complete(job_id, new, WorkerComplete(status="succeeded", attempt=2)).status
        == "succeeded"
    )


def test_worker_retryable_failure_requeues(world: World, worker: WorkerService) -> None:
    job_id = world.submit(world.tenant("vision"), max_attempts=2)
    world.scheduler.tick()
    token = world.executor.spec_of(job_id).token
    error = {"code": "oom", "message": "out of memory"}
    out = worker.complete(
        job_id, token, WorkerComplete(status="failed", error=error, retryable=True)
    )
    assert out.status == "queued"
    job = world.job(job_id)
    assert (job.status, job.failures) == ("queued", 1)


def test_a_lease_expired_report_spends_no_attempt(world: World, worker: WorkerService) -> None:
    """The worker's own report of its lease running out arrives once the control plane is
    back: re-queued without a failure, like a worker lost in a control-plane restart."""
    job_id = world.submit(world.tenant("vision"), max_attempts=1)
    world.scheduler.tick()
    token = world.executor.spec_of(job_id).token
    error = {"code": LEASE_EXPIRED, "message": "lost the control plane"}
    report = WorkerComplete(status="failed", error=error, retryable=True)
    assert worker.complete(job_id, token, report).status == "queued"
    assert (world.job(job_id).failures, world.scheduler.tick().placed) == (0, 1)
    job = world.job(job_id)
    assert (job.status, job.failures, job.attempt) == ("running", 0, 2)


def test_worker_sees_cancel_request(world: World, worker: WorkerService) -> None:
    who = world.tenant("vision")
    job_id = world.submit(who)
    world.scheduler.tick()
    token = world.executor.spec_of(job_id).token
    world.jobs.cancel(who, job_id)
    assert worker.add_events(job_id, token, []).cancel_requested is True
    assert worker.complete(job_id, token, WorkerComplete(status="failed")).status == "cancelled"


def test_worker_refuses_unknown_outcome(world: World, worker: WorkerService) -> None:
    job_id = world.submit(world.tenant("vision"))
    world.scheduler.tick()
    token = world.executor.spec_of(job_id).token
    with pytest.raises(InvalidRequest) as err:
        worker.complete(job_id, token, WorkerComplete(status="done"))
    assert err.value.param == "status"
    assert world.status(job_id) == ["running"]


def test_worker_event_with_bad_time_is_refused_naming_the_field() -> None:
    # Worker events are typed at the API edge, so a bad `at` is a 422, not a 500.
    with pytest.raises(ValidationError) as err:
        WorkerEvents.model_validate({"events": [{"message": "hi", "at": "yesterday"}]})
    assert err.value.errors()[0]["loc"] == ("events", 0, "at")
