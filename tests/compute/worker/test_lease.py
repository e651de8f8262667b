"""A worker whose control plane is gone: it stops after its lease, and it honours SIGTERM
within the executor's grace. These start a real worker process, because the signal, the
exit and the process's own log are what is under test; the control plane is a stub HTTP
server that is shut down under the worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from modelfab.compute.executors.local import LocalExecutor
from modelfab.compute.worker.__main__ import EXIT_LEASE_EXPIRED
from modelfab.compute.worker.api import LEASE_ENV, TOKEN_ENV, URL_ENV, WorkerAPI
from modelfab.compute.worker.context import WorkerContext
from modelfab.settings import ServerSettings
from tests.e2e.helpers import eventually

JOB = "job_lease"
SPEC = {"recipe": "sleep", "params": {"seconds": 600}, "dataset": None, "resources": {}}


class StubControlPlane:
    """Answers a worker's spec, events and complete calls until `stop()`; then the port
    is closed and every call is refused, as when the control plane is gone."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer(SPEC)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._answer({"accepted": 0, "cancel_requested": False})

            def _answer(self, body: dict[str, object]) -> None:
                stub.paths.append(self.path)
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def stub() -> Iterator[StubControlPlane]:
    cp = StubControlPlane()
    try:
        yield cp
    finally:
        cp.stop()


def start_worker(url: str, tmp_path: Path, *, lease_s: float) -> subprocess.Popen[str]:
    env = {**os.environ, URL_ENV: url, TOKEN_ENV: "tok", LEASE_ENV: str(lease_s)}
    env["PYTHONPATH"] = os.pathsep.join([str(Path.cwd() / "src"), env.get("PYTHONPATH", "")])
    argv = [sys.executable, "-m", "modelfab.compute.worker", "--job-id", JOB]
    argv += ["--attempt", "1", "--node-id", "n1", "--workdir", str(tmp_path)]
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def started(stub: StubControlPlane) -> bool:
    """The worker read its spec and shipped its first event: the recipe runs."""
    return any(p.endswith("/events") for p in stub.paths)


def finish(proc: subprocess.Popen[str], timeout_s: float) -> tuple[int, str]:
    """Wait for the worker to exit by itself (killed and failed if it does not)."""
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the worker was still running after {timeout_s}s:\n{out[-3000:]}")
    return proc.returncode, out


def test_a_worker_without_its_control_plane_stops_after_its_lease(
    stub: StubControlPlane, tmp_path: Path
) -> None:
    proc = start_worker(stub.url, tmp_path, lease_s=1.5)
    try:
        eventually(lambda: started(stub), what="the worker to start its recipe")
        stub.stop()
        # A 600 s sleep stops once the lease (1.5 s) is spent; 30 s only bounds a hang.
        code, out = finish(proc, timeout_s=30)
    finally:
        proc.kill()
    assert code == EXIT_LEASE_EXPIRED, out
    assert "longer than the worker lease (1.5 s" in out
    assert "worker lease expired; exiting" in out


def test_sigterm_is_honoured_without_a_control_plane(
    stub: StubControlPlane, tmp_path: Path
) -> None:
    """The executor SIGKILLs after `cancel_grace_s` (5 s): the worker must be gone by
    itself well before the 10 minutes it used to spend retrying its report."""
    proc = start_worker(stub.url, tmp_path, lease_s=300)
    try:
        eventually(lambda: started(stub), what="the worker to start its recipe")
        stub.stop()
        proc.send_signal(signal.SIGTERM)
        code, out = finish(proc, timeout_s=15)
    finally:
        proc.kill()
    assert code == 1, out
    assert "could not report the end of attempt 1" in out


def test_the_idle_shipper_renews_the_lease(tmp_path: Path) -> None:
    """With nothing to ship, the worker still calls its control plane (an empty events
    call) so that a quiet replica does not lose its lease to silence."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"accepted": 0, "cancel_requested": True})

    api = WorkerAPI("http://c", "tok", JOB, lease_s=0.8, transport=httpx.MockTransport(handle))
    ctx = WorkerContext(
        api, job_id=JOB, attempt=1, dataset=None, dataset_path=None, workdir=tmp_path
    )
    try:
        eventually(ctx.cancelled, timeout_s=10, what="a heartbeat to learn of the cancel")
    finally:
        ctx.close()
    assert seen and set(seen) == {f"/v1/worker/jobs/{JOB}/events"}
    assert not ctx.lease_lost.is_set()


def test_the_executor_hands_the_servers_lease_to_its_workers(tmp_path: Path) -> None:
    lease = ServerSettings(home=tmp_path, worker_lease_s=2).worker_lease_s
    executor = LocalExecutor(
        node_id="n1", logs_dir=tmp_path, workdir=tmp_path, worker_lease_s=lease
    )
    assert executor.env[LEASE_ENV] == "2.0"
    with pytest.raises(ValueError, match="worker_lease_s"):
        ServerSettings(home=tmp_path, worker_lease_s=0)
