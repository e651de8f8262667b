"""The local executor's process handling, with real processes."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from modelfab.compute.executors.local.process import (
    describe_exit,
    find_workers,
    kill_tree,
    parse_worker_cmdline,
    worker_argv,
)

# A parent that ignores SIGTERM and starts a child that ignores it too (a stubborn tree).
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_kill_tree_kills_stubborn_descendants() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        child_pid = int(proc.stdout.readline())
        started = time.monotonic()
        kill_tree(proc.pid, grace_s=0.5)
        assert time.monotonic() - started < 10
        assert proc.wait(timeout=5) == -9  # SIGKILL after the grace period
        gone = not psutil.pid_exists(child_pid) or (
            psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
        )
        assert gone
    finally:
        proc.kill()


def test_worker_cmdline_round_trips_and_is_scoped_to_its_node() -> None:
    argv = ["python", *worker_argv("job_1", 3, "node-a")]
    assert parse_worker_cmdline(argv, "node-a") == ("job_1", 3)
    assert parse_worker_cmdline(argv, "node-b") is None
    assert parse_worker_cmdline(["python", "-m", "other"], "node-a") is None


def test_find_workers_sees_a_live_worker_process() -> None:
    # A process whose command line looks like a worker's (it only sleeps).
    code = "import time; time.sleep(30)"
    argv = [sys.executable, "-c", code, *worker_argv("job_x", 2, "node-find-test")]
    proc = subprocess.Popen(argv, start_new_session=True)
    try:
        found = find_workers("node-find-test")
        assert set(found) == {("job_x", 2)}
        assert found[("job_x", 2)].pid == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_describe_exit_names_signals() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exited with code 3"
