"""`modelfab up` as a real process, killed with SIGKILL mid-job and started again: nothing
is lost and no job runs twice. These start real servers because crash recovery is what is
under test; each waits for readiness and kills its process tree in `finally`."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.client import Client
from modelfab.compute.executors.local.process import find_workers
from modelfab.db.engine import make_engine, make_sessionmaker
from modelfab.db.models import UsageRecord
from tests.e2e.helpers import UpProcess, eventually, wait_status, wait_terminal, worker_started
from tests.e2e.test_serving import predict, register_tiny
from tests.serving.factories import image_bytes

pytestmark = pytest.mark.e2e


@pytest.fixture
def up(tmp_path: Path, db_url: str, factory: object) -> Iterator[UpProcess]:
    home = tmp_path / "home"
    home.mkdir()
    server = UpProcess(home, db_url)
    try:
        yield server
    finally:
        server.cleanup()


def _team(up: UpProcess) -> Client:
    admin = Client(up.url, (up.home / "admin.key").read_text().strip())
    return Client(up.url, admin.create_tenant("team-restart").api_key)


def test_sigkill_mid_job_loses_nothing_and_runs_nothing_twice(up: UpProcess, db_url: str) -> None:
    up.start()
    team = _team(up)
    running = team.create_job("sleep", params={"seconds": 6}, cpus=2)
    eventually(lambda: worker_started(team, running.id), what="the worker to start")
    # Hold the remaining CPU slots so the next job stays queued across the crash.
    blocker = team.create_job("sleep", params={"seconds": 8}, cpus=2)
    wait_status(team, blocker.id, "running")
    queued = team.create_job("sleep", params={"seconds": 0}, cpus=2)
    assert team.get_job(queued.id).status == "queued"

    up.kill9()
    workers = find_workers(up.node_id())
    assert {job for job, _ in workers} == {running.id, blocker.id}  # they outlive it
    up.start()

    done = wait_terminal(team, running.id)
    assert done.status == "succeeded" and done.attempt == 1  # re-adopted, not re-run
    assert any("re-adopted" in e.message for e in team.job_events(running.id))
    assert wait_terminal(team, queued.id).status == "succeeded"
    assert team.get_job(queued.id).attempt == 1
    wait_terminal(team, blocker.id)
    _assert_metered_once(db_url, [running.id, blocker.id, queued.id])


def test_worker_lost_while_server_down_is_requeued_without_counting_a_failure(
    up: UpProcess,
) -> None:
    up.start()
    team = _team(up)
    job = team.create_job("sleep", params={"seconds": 30}, cpus=1, max_attempts=1)
    started = eventually(lambda: worker_started(team, job.id), what="the worker to start")
    up.kill9()
    os.kill(started.data["pid"], signal.SIGKILL)
    eventually(lambda: not _alive(started.data["pid"]), what="the worker to die")
    up.start()

    def second_attempt() -> bool:
        return team.get_job(job.id).attempt == 2

    eventually(second_attempt, what="the job to run again")
    after = team.get_job(job.id)
    assert after.failures == 0 and after.status == "running"  # max_attempts=1 still runs
    assert any("control-plane restart" in e.message for e in team.job_events(job.id))
    team.cancel_job(job.id)
    assert wait_terminal(team, job.id).status == "cancelled"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_metered_once(db_url: str, job_ids: list[str]) -> None:
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as s:
            rows = s.scalars(select(UsageRecord).where(UsageRecord.ref_id.in_(job_ids))).all()
    finally:
        engine.dispose()
    keys = [r.idempotency_key for r in rows]
    assert len(keys) == len(set(keys)) == len(job_ids)  # one cpu_seconds record per attempt
    assert all(r.quantity > 0 for r in rows if r.ref_id != job_ids[2])


def test_request_usage_is_neither_lost_nor_doubled_across_a_sigkill(
    up: UpProcess, factory: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Flush the usage journal rarely, so that the requests below are only in the journal's
    # segment file when the control plane is killed.
    monkeypatch.setenv("MODELFAB_USAGE_FLUSH_S", "60")
    up.start()
    admin = Client(up.url, (up.home / "admin.key").read_text().strip())
    key = admin.create_tenant("vision").api_key
    team = Client(up.url, key)
    register_tiny(up.url, factory, tmp_path, "parts", seed=1)
    team.create_endpoint("parts", model="parts", cpus=0.5)
    team.wait_endpoint("parts", timeout_s=60)
    image = [image_bytes(seed=3)]
    assert all(predict(up.url, key, "parts", image).status_code == 200 for _ in range(7))
    assert _requests(factory) == 0  # nothing written yet: all of it is in the journal

    up.kill9()
    up.start()
    eventually(lambda: _requests(factory) == 7, timeout_s=20, what="journalled usage")
    team.wait_endpoint("parts", timeout_s=60)  # the replica was re-adopted, not restarted
    assert all(predict(up.url, key, "parts", image).status_code == 200 for _ in range(3))
    up.stop()  # a graceful stop flushes what is left
    assert _requests(factory) == 10


def _requests(factory: sessionmaker[Session]) -> float:
    with factory() as session:
        rows = session.scalars(
            select(UsageRecord.quantity).where(UsageRecord.meter == "requests")
        ).all()
    return sum(rows)
