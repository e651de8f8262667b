"""Jobs on a real control plane (in this process) with real worker subprocesses: these
start processes because placement, signals and exits are what is under test."""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.client import Client
from modelfab.db.models import JobAllocation, UsageRecord
from modelfab.server import Platform
from tests.e2e.helpers import eventually, wait_status, wait_terminal, worker_started


@pytest.fixture
def team(platform: Platform) -> Client:
    admin = Client(platform.url, platform.settings.admin_key_path.read_text().strip())
    tenant = admin.create_tenant("team-e2e", max_gpus=2)
    return Client(platform.url, tenant.api_key)


def test_job_runs_on_its_placed_devices_and_is_metered(
    team: Client, factory: sessionmaker[Session]
) -> None:
    job = team.create_job("sleep", params={"seconds": 1}, gpus=1, cpus=0.5)
    done = wait_terminal(team, job.id)
    assert done.status == "succeeded", done
    assert done.result["slept_s"] >= 1
    started = next(e for e in team.job_events(job.id) if " started " in e.message)
    # The worker saw exactly the device it was placed on.
    assert started.data["cuda_visible_devices"] == done.cuda_visible_devices in ("0", "1")
    assert any(e.type == "metrics" for e in team.job_events(job.id))
    log = team.job_logs(job.id)
    assert f"devices='{done.cuda_visible_devices}'" in log.text
    with factory() as s:
        meters = {u.meter: u.quantity for u in s.scalars(select(UsageRecord))}
        assert s.scalars(select(JobAllocation)).all() == []
    assert meters["gpu_seconds"] >= 1.0 and meters["cpu_seconds"] >= 0.5


def test_fractional_jobs_share_a_device(team: Client) -> None:
    jobs = [team.create_job("sleep", params={"seconds": 2}, gpus=0.5, cpus=0.5) for _ in range(2)]
    for job in jobs:
        wait_status(team, job.id, "running")
    running = [team.get_job(j.id) for j in jobs]
    assert running[0].cuda_visible_devices == running[1].cuda_visible_devices
    pool = team.pool()
    device = pool.nodes[0].devices[int(running[0].cuda_visible_devices)]
    assert device.free == 0 and len(device.allocations) == 2


def test_killed_worker_fails_the_attempt_and_is_retried(team: Client) -> None:
    job = team.create_job("sleep", params={"seconds": 30}, cpus=0.5, max_attempts=2)
    eventually(lambda: worker_started(team, job.id), what="the worker to start")
    pid = eventually(lambda: _pid_of(team, job.id), what="the pid to be recorded")
    os.kill(pid, signal.SIGKILL)
    retried = eventually(lambda: (j := team.get_job(job.id)).attempt == 2 and j, what="retry")
    assert retried.failures == 1
    warning = [e for e in team.job_events(job.id) if e.level == "warning"]
    assert any("killed by SIGKILL" in e.message for e in warning), warning
    team.cancel_job(job.id)
    assert wait_terminal(team, job.id).status == "cancelled"


def _pid_of(team: Client, job_id: str) -> int | None:
    for e in team.job_events(job_id):
        if " started " in e.message and e.attempt == team.get_job(job_id).attempt:
            return int(e.data["pid"])
    return None


def test_failing_job_exhausts_its_attempts(team: Client) -> None:
    job = team.create_job("sleep", params={"seconds": 0, "fail_attempts": 5}, max_attempts=2)
    done = wait_terminal(team, job.id)
    assert done.status == "failed"
    assert done.attempt == 2 and done.failures == 2
    assert done.error["code"] == "process_exited"
    assert "exited with code 3" in done.error["message"]


def test_cancel_stops_a_running_worker(team: Client) -> None:
    job = team.create_job("sleep", params={"seconds": 60}, cpus=0.5)
    eventually(lambda: worker_started(team, job.id), what="the worker to start")
    pid = eventually(lambda: _pid_of(team, job.id))
    team.cancel_job(job.id)
    done = wait_terminal(team, job.id, timeout_s=20)
    assert done.status == "cancelled"
    # The worker reports, then exits: its process is gone moments later.
    eventually(lambda: not _alive(pid), timeout_s=10, what=f"pid {pid} to exit")
    assert any("cancel received" in e.message for e in team.job_events(job.id))


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_higher_priority_runs_first_when_capacity_is_short(
    platform: Platform, team: Client
) -> None:
    # Fill both GPUs, queue a low- then a high-priority 1-GPU job: the high one goes first.
    blockers = [team.create_job("sleep", params={"seconds": 3}, gpus=1, cpus=0.5) for _ in range(2)]
    low = team.create_job("sleep", params={"seconds": 0}, gpus=1, cpus=0.5, priority=0)
    high = team.create_job("sleep", params={"seconds": 0}, gpus=1, cpus=0.5, priority=5)
    for job in (*blockers, low, high):
        assert wait_terminal(team, job.id).status == "succeeded"
    assert _placed_at(team, high.id) <= _placed_at(team, low.id)


def _placed_at(team: Client, job_id: str) -> float:
    return next(e.created_at for e in team.job_events(job_id) if " placed on " in e.message)
