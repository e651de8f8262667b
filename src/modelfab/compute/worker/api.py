"""HTTP calls a worker makes, with retries while the control plane is away (e.g. restarting)."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import httpx

from modelfab.errors import ModelfabError

logger = logging.getLogger(__name__)

TOKEN_ENV = "MODELFAB_JOB_TOKEN"
URL_ENV = "MODELFAB_URL"
LEASE_ENV = "MODELFAB_WORKER_LEASE_S"
"""Seconds a worker keeps running without reaching its control plane (set by the executor)."""
DEFAULT_LEASE_S = 300.0
STOPPING_RETRY_S = 1.5
"""Once the worker is stopping, no call retries longer than this: a SIGTERMed worker must
exit inside the executor's grace (`cancel_grace_s`, 5 s by default) even when the control
plane is gone; the scheduler reconciles an end that was not reported."""


ATTEMPT_OVER = (401, 404, 409)
"""What the control plane answers a worker whose attempt it no longer runs."""


class AttemptOver(Exception):
    """The control plane no longer treats this process as the job's running attempt."""


class ControlPlaneRefused(ModelfabError):
    """The control plane answered a request of this worker with a 4xx error: its status,
    code, message and param, so a replica can pass them on to whoever asked it."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status

    @classmethod
    def of(cls, resp: httpx.Response) -> ControlPlaneRefused:
        """The error in `resp`'s `{"error": {...}}` body, or one naming its status."""
        try:
            error = resp.json()["error"]
            message, code, param = str(error["message"]), str(error["code"]), error.get("param")
        except (ValueError, KeyError, TypeError):
            message = f"the control plane answered HTTP {resp.status_code}"
            code, param = "control_plane_refused", None
        return cls(resp.status_code, message, code=code, param=param)


class WorkerAPI:
    def __init__(
        self,
        url: str,
        token: str,
        job_id: str,
        *,
        retry_for_s: float = 600.0,
        lease_s: float = DEFAULT_LEASE_S,
        transport: httpx.BaseTransport | None = None,
    ):
        """`transport` replaces the network (tests pass an `httpx.MockTransport`). A call
        retries for `retry_for_s`, but never past the lease: `lease_s` after the last
        answer of the control plane (any HTTP answer counts: it is reachable)."""
        self.job_id = job_id
        self.retry_for_s = retry_for_s
        self.lease_s = lease_s
        self.last_answer = time.monotonic()
        """time.monotonic() of the last HTTP answer from the control plane."""
        self._stopping_since: float | None = None
        self._http = httpx.Client(
            base_url=f"{url.rstrip('/')}/v1/worker/jobs/{job_id}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30.0,
            # Building a TLS context costs ~50 ms per worker start; plain HTTP needs none.
            verify=url.startswith("https://"),
            transport=transport,
        )

    def spec(self) -> dict[str, Any]:
        return self._call("GET", "/spec")

    def events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        return self._call("POST", "/events", json={"events": events})

    def complete(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/complete", json=payload)

    def announce_serving(self, url: str, secret: str) -> dict[str, Any]:
        """Tell the control plane this replica answers at `url` to whoever presents
        `secret` (endpoint replicas only)."""
        return self._call("POST", "/serving", json={"url": url, "secret": secret})

    def model_files(self, version_id: str) -> dict[str, Any]:
        """Where a model version's files are, for a replica of its tenant: {onnx, labels}
        each `{uri, sha256}`. Raises AttemptOver on 401 (the token no longer holds),
        ControlPlaneRefused on any other 4xx (e.g. 422: no such version of the tenant)."""
        return self._call("GET", f"/models/{version_id}", pass_on=True)

    def model_artifacts(self, version_id: str) -> dict[str, Any]:
        """Every artifact of a model version of the job's tenant: {version_id, task,
        artifacts: {name: {uri, sha256}}}. Raises AttemptOver on 401, ControlPlaneRefused
        on any other 4xx (e.g. 422: no such version of the tenant)."""
        return self._call("GET", f"/models/{version_id}/artifacts", pass_on=True)

    def upload_artifact(self, path: Path, *, name: str, format: str) -> dict[str, Any]:
        """Upload a file to the artifact store; the server checks it against our sha256.

        The bytes are read once, so a retry after a dropped connection resends them whole
        (model artifacts are tens of MB, not GB)."""
        content = path.read_bytes()
        data = {"name": name, "format": format, "sha256": hashlib.sha256(content).hexdigest()}
        files = {"file": (name, content, "application/octet-stream")}
        return self._call("POST", "/artifacts", data=data, files=files)

    def heartbeat(self) -> dict[str, Any]:
        """An empty events call: renews the lease and answers `cancel_requested`."""
        return self.events([])

    def lease_expired(self) -> bool:
        """No answer from the control plane for longer than the lease."""
        return time.monotonic() - self.last_answer > self.lease_s

    def stop_retrying(self) -> None:
        """From now on each call retries for at most STOPPING_RETRY_S. Safe in a signal
        handler: it takes no lock (a plain attribute write)."""
        if self._stopping_since is None:
            self._stopping_since = time.monotonic()

    def close(self) -> None:
        self._http.close()

    def _give_up_at(self, started: float) -> float:
        end = min(started + self.retry_for_s, self.last_answer + self.lease_s)
        if self._stopping_since is not None:
            end = min(end, max(started, self._stopping_since) + STOPPING_RETRY_S)
        return end

    def _call(
        self,
        method: str,
        path: str,
        *,
        pass_on: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Retry connection errors and 5xx with backoff for `retry_for_s`, never past the
        lease nor, once stopping, past STOPPING_RETRY_S (one try is always made; no try
        waits longer than the time left, 30 s at most).

        Raises AttemptOver on 401/404/409, httpx.HTTPStatusError on another 4xx,
        httpx.HTTPError when retries run out. With `pass_on` (calls that name a resource
        besides the job, whose 404 or 409 is about that resource) only 401 is AttemptOver
        and any other 4xx raises ControlPlaneRefused."""
        started = time.monotonic()
        delay = 0.1
        while True:
            timeout = min(30.0, max(0.5, self._give_up_at(started) - time.monotonic()))
            try:
                resp = self._http.request(method, path, timeout=timeout, **kwargs)
                self.last_answer = time.monotonic()
                if resp.status_code in ((401,) if pass_on else ATTEMPT_OVER):
                    raise AttemptOver(resp.text)
                if pass_on and 400 <= resp.status_code < 500:
                    raise ControlPlaneRefused.of(resp)
                if resp.status_code < 500:
                    resp.raise_for_status()
                    out: dict[str, Any] = resp.json()
                    return out
                logger.warning("control plane answered %s; retrying", resp.status_code)
            except httpx.TransportError as exc:
                logger.warning("control plane unreachable (%s); retrying", exc)
                if time.monotonic() >= self._give_up_at(started):
                    raise
            left = self._give_up_at(started) - time.monotonic()
            if left <= 0:
                waited = time.monotonic() - started
                raise httpx.HTTPError(f"{method} {path}: gave up after {waited:.1f}s")
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)
