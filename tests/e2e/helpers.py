"""Helpers for tests that run real worker processes: polling with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from modelfab.client import TERMINAL, Client
from modelfab.schemas.jobs import Job, JobEvent

T = TypeVar("T")


def eventually(check: Callable[[], T | None], timeout_s: float = 30.0, what: str = "") -> T:
    """Poll `check` until it returns a truthy value; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or check}")
        time.sleep(0.05)


def wait_terminal(client: Client, job_id: str, timeout_s: float = 60.0) -> Job:
    def done() -> Job | None:
        job = client.get_job(job_id)
        return job if job.status in TERMINAL else None

    return eventually(done, timeout_s, f"job {job_id} to end")


def wait_status(client: Client, job_id: str, status: str, timeout_s: float = 30.0) -> Job:
    def reached() -> Job | None:
        job = client.get_job(job_id)
        return job if job.status == status else None

    return eventually(reached, timeout_s, f"job {job_id} to be {status}")


def worker_started(client: Client, job_id: str) -> JobEvent | None:
    """The worker's own 'Attempt N started' event, once it posted one."""
    for event in client.job_events(job_id):
        if event.message.startswith("Attempt") and " started " in event.message:
            return event
    return None
