"""Helpers for tests that run real processes: polling with a deadline, `modelfab up`."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

from modelfab.client import TERMINAL, Client
from modelfab.compute.executors.local.process import find_workers, kill_tree
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


class UpProcess:
    """`modelfab up` as a real process on a fixed loopback port (workers keep the URL across
    restarts), with 2 fake GPUs and 4 CPU slots: started, killed with SIGKILL, stopped."""

    def __init__(self, home: Path, database_url: str):
        self.home, self.database_url = home, database_url
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it and wait until it answers; returns the seconds that took."""
        t0 = time.monotonic()
        options = {"--home": self.home, "--port": self.port, "--fake-gpus": 2, "--cpus": 4,
                   "--database-url": self.database_url, "--log-level": "warning"}  # fmt: skip
        argv = [sys.executable, "-m", "modelfab.cli.main", "up"]
        argv += [str(part) for option in options.items() for part in option]
        log = open(self.home / "up.log", "ab")  # noqa: SIM115 - the child writes it
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        eventually(self._ready, timeout_s=90, what="modelfab up to answer")
        return time.monotonic() - t0

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError("modelfab up exited:\n" + (self.home / "up.log").read_text())
        try:
            return httpx.get(self.url + "/v1/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)

    def node_id(self) -> str:
        return (self.home / "node-id").read_text().strip()

    def cleanup(self) -> None:
        """Kill the control plane and every worker and replica it left."""
        if self.proc is not None and self.proc.poll() is None:
            kill_tree(self.proc.pid, grace_s=2)
        if (self.home / "node-id").exists():
            for proc in find_workers(self.node_id()).values():
                kill_tree(proc.pid, grace_s=1)
