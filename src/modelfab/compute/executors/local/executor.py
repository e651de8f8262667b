"""Runs each job attempt as `python -m modelfab.compute.worker` in its own session and
process group, output to a log file per attempt, devices given by CUDA_VISIBLE_DEVICES.

Workers are started in a new session so that they outlive a crash of the control plane;
the next control plane finds them again by their command line (`running_attempts`)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from modelfab.compute.executors.base import (
    Executor,
    ExitInfo,
    LaunchSpec,
    LogChunk,
    Reattachable,
)
from modelfab.compute.executors.local.process import (
    describe_exit,
    find_workers,
    is_alive,
    kill_tree,
    worker_argv,
)
from modelfab.compute.worker.api import LEASE_ENV

logger = logging.getLogger(__name__)


@dataclass
class _Attempt:
    attempt: int
    pid: int
    popen: subprocess.Popen[bytes] | None  # None for an adopted process (not our child)
    proc: psutil.Process | None = None


class LocalExecutor(Executor, Reattachable):
    def __init__(
        self,
        *,
        node_id: str,
        logs_dir: Path,
        workdir: Path,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        worker_lease_s: float | None = None,
    ):
        """`env` is added to every worker's environment (the platform's plugins, say);
        `worker_lease_s` is how long a worker runs on without reaching the control plane
        (the worker's default when None)."""
        self.node_id = node_id
        self.env = dict(env or {})
        if worker_lease_s is not None:
            self.env[LEASE_ENV] = repr(float(worker_lease_s))
        self.logs_dir = logs_dir
        self.workdir = workdir
        self.python = python
        self._attempts: dict[str, _Attempt] = {}
        self._lock = threading.Lock()

    def log_path(self, job_id: str, attempt: int) -> Path:
        return self.logs_dir / "jobs" / job_id / f"attempt-{attempt}.log"

    def launch(self, spec: LaunchSpec) -> int:
        log = self.log_path(spec.job_id, spec.attempt)
        log.parent.mkdir(parents=True, exist_ok=True)
        workdir = self.workdir / spec.job_id
        workdir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **self.env,
            **spec.env,
            "CUDA_VISIBLE_DEVICES": spec.cuda_visible_devices,
            "MODELFAB_URL": spec.api_url,
            "MODELFAB_JOB_TOKEN": spec.token,
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("MODELFAB_API_KEY", None)  # a worker gets its job token, never a tenant's key
        argv = [self.python, *worker_argv(spec.job_id, spec.attempt, self.node_id)]
        argv += ["--workdir", str(workdir)]
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
                start_new_session=True,
            )
        with self._lock:
            self._attempts[spec.job_id] = _Attempt(spec.attempt, popen.pid, popen)
        logger.info("launched job %s attempt %d as pid %d", spec.job_id, spec.attempt, popen.pid)
        return popen.pid

    def poll(self, job_id: str) -> ExitInfo | None:
        with self._lock:
            entry = self._attempts.get(job_id)
        if entry is None:
            return ExitInfo(code=None, reason="not running on this node")
        info = _poll(entry)
        if info is not None:
            with self._lock:
                self._attempts.pop(job_id, None)
        return info

    def cancel(self, job_id: str, grace_s: float) -> None:
        with self._lock:
            entry = self._attempts.get(job_id)
        if entry is not None:
            threading.Thread(
                target=kill_tree, args=(entry.pid, grace_s), name=f"cancel-{job_id}", daemon=True
            ).start()

    def logs(self, job_id: str, attempt: int, offset: int, limit: int) -> LogChunk:
        path = self.log_path(job_id, attempt)
        if not path.exists():
            return LogChunk(text="", offset=offset, next_offset=offset)
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(limit)
        return LogChunk(
            text=data.decode("utf-8", "replace"), offset=offset, next_offset=offset + len(data)
        )

    def tracked(self) -> dict[str, int]:
        with self._lock:
            return {job_id: a.attempt for job_id, a in self._attempts.items()}

    def running_attempts(self) -> dict[str, int]:
        return {job_id: attempt for job_id, attempt in find_workers(self.node_id)}

    def adopt(self, job_id: str, attempt: int) -> bool:
        proc = find_workers(self.node_id).get((job_id, attempt))
        if proc is None:
            return False
        with self._lock:
            self._attempts[job_id] = _Attempt(attempt, proc.pid, None, proc)
        logger.info("re-adopted job %s attempt %d (pid %d)", job_id, attempt, proc.pid)
        return True

    def kill_stray(self, job_id: str, attempt: int) -> None:
        proc = find_workers(self.node_id).get((job_id, attempt))
        if proc is not None:
            logger.warning("killing stray worker of job %s attempt %d", job_id, attempt)
            kill_tree(proc.pid, grace_s=2.0)

    def shutdown(self) -> None:
        """Forget tracked attempts without killing them: a restart re-adopts them."""
        with self._lock:
            self._attempts.clear()


def _poll(entry: _Attempt) -> ExitInfo | None:
    if entry.popen is not None:
        code = entry.popen.poll()
        return None if code is None else ExitInfo(code=code, reason=describe_exit(code))
    assert entry.proc is not None
    if is_alive(entry.proc):
        return None
    return ExitInfo(code=None, reason="process ended (its exit code is unknown after a restart)")
