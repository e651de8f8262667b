"""Process-tree helpers for the local executor (psutil does the platform work)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import time

import psutil

logger = logging.getLogger(__name__)

WORKER_MODULE = "modelfab.compute.worker"


def worker_argv(job_id: str, attempt: int, node_id: str) -> list[str]:
    return [
        "-m",
        WORKER_MODULE,
        "--job-id",
        job_id,
        "--attempt",
        str(attempt),
        "--node-id",
        node_id,
    ]


def parse_worker_cmdline(cmdline: list[str], node_id: str) -> tuple[str, int] | None:
    """(job id, attempt) when `cmdline` is a worker of `node_id`, else None."""
    if WORKER_MODULE not in cmdline or "--node-id" not in cmdline:
        return None
    try:
        args = dict(itertools.pairwise(cmdline))
        if args["--node-id"] != node_id:
            return None
        return args["--job-id"], int(args["--attempt"])
    except (KeyError, ValueError):
        return None


def find_workers(node_id: str) -> dict[tuple[str, int], psutil.Process]:
    """Live worker processes of `node_id`, by (job id, attempt)."""
    found: dict[tuple[str, int], psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or not proc.info["cmdline"]:
                continue
            key = parse_worker_cmdline(proc.info["cmdline"], node_id)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if key is not None:
            found[key] = proc
    return found


def kill_tree(pid: int, grace_s: float) -> None:
    """SIGTERM the process, its group and all descendants; SIGKILL what is left after
    `grace_s`. Blocks up to `grace_s` (run it in a thread). Never reaps: the executor's
    own poll must still see the exit status of its children."""
    procs = _tree(pid)
    _signal_all(pid, procs, signal.SIGTERM)
    alive = _wait_gone(procs, grace_s)
    alive += [p for p in _tree(pid) if p not in alive and is_alive(p)]
    if alive:
        logger.info("killing %d processes of pid %s that ignored SIGTERM", len(alive), pid)
        _signal_all(pid, alive, signal.SIGKILL)
        _wait_gone(alive, 5.0)


def is_alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (an exited process nobody reaped yet counts as gone)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process is gone or `timeout_s` passed; returns those still alive."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if is_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if is_alive(p)]
    return alive


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal_all(pid: int, procs: list[psutil.Process], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the worker leads its own group (start_new_session)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(sig)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"
