"""The RecipeContext a worker hands to a recipe: events are buffered and shipped by a
background thread so that a recipe never waits on the network."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from modelfab.compute.worker.api import AttemptOver, WorkerAPI
from modelfab.errors import ModelfabError

logger = logging.getLogger(__name__)

MAX_BUFFER = 10_000
SHIP_INTERVAL_S = 0.2
HEARTBEAT_S = 10.0
"""An idle worker calls the control plane this often (or each quarter lease if shorter):
the call renews the lease and learns of a cancel."""


class ReplicaStopping(ModelfabError):
    """A replica whose attempt is over was asked for a model: another replica answers."""

    status = 503
    code = "replica_stopping"


class WorkerContext:
    def __init__(
        self,
        api: WorkerAPI,
        *,
        job_id: str,
        attempt: int,
        dataset: dict[str, Any] | None,
        dataset_path: Path | None,
        workdir: Path,
        base_weights: Path | None = None,
        resources: dict[str, Any] | None = None,
        hub_dir: Path | None = None,
    ):
        self.job_id = job_id
        self.resources = dict(resources or {})
        """What the job asked for: gpus, cpus, memory_bytes."""
        self.attempt = attempt
        self.dataset = dataset
        self.base_weights = base_weights
        self.hub_dir = hub_dir
        """This node's hub folder (the `HasHub` capability)."""
        self.dataset_path = dataset_path
        self.workdir = workdir
        self._api = api
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._signalled = False
        self._stop = threading.Event()
        self.attempt_over = threading.Event()
        self.lease_lost = threading.Event()
        """Set when the control plane was unreachable for longer than the api's lease."""
        self.models: list[dict[str, Any]] = []
        """The models the recipe registered, in order (each a version if the job succeeds)."""
        self._shipper = threading.Thread(target=self._ship_loop, name="event-shipper", daemon=True)
        self._shipper.start()

    def event(
        self,
        message: str,
        *,
        type: str = "message",
        level: str = "info",
        data: dict[str, Any] | None = None,
    ) -> None:
        item = {"message": message, "type": type, "level": level, "data": data, "at": time.time()}
        with self._lock:
            if len(self._buffer) >= MAX_BUFFER:
                self._buffer.pop(0)  # keep the newest while the control plane is away
            self._buffer.append(item)

    def metrics(self, step: int | None = None, **values: float) -> None:
        data: dict[str, Any] = dict(values)
        if step is not None:
            data["step"] = step
        text = " ".join(f"{k}={v}" for k, v in data.items())
        self.event(text, type="metrics", data=data)

    def upload_artifact(self, path: Path, *, name: str, format: str) -> dict[str, Any]:
        """Store `path` in the artifact store (blocks; retries while the control plane is away)."""
        return self._api.upload_artifact(path, name=name, format=format)

    def register_model(self, model: dict[str, Any]) -> None:
        """Register `model` (name, task, artifacts, metrics, ...) when the job succeeds: the
        version is created in the same transaction that marks the job succeeded. Each call
        adds a model."""
        self.models.append(model)

    def announce_serving(self, url: str, secret: str) -> None:
        self._api.announce_serving(url, secret)

    def model_files(self, version_id: str) -> dict[str, Any]:
        """The version's file refs. Raises ControlPlaneRefused (the control plane's 4xx,
        passed on), or ReplicaStopping (503) once the attempt is over, which also makes
        `cancelled()` true so the replica drains."""
        try:
            return self._api.model_files(version_id)
        except AttemptOver as exc:
            self.attempt_over.set()
            raise ReplicaStopping(
                "this replica is stopping (its job is no longer running); retry, another "
                "replica answers"
            ) from exc

    def model_artifacts(self, version_id: str) -> dict[str, Any]:
        """Every artifact of a version of the job's tenant, by name (`FetchesModelArtifacts`).
        Raises ControlPlaneRefused (the control plane's 4xx, e.g. no such version)."""
        return self._api.model_artifacts(version_id)

    def cancelled(self) -> bool:
        return (
            self._signalled
            or self._cancel.is_set()
            or self.attempt_over.is_set()
            or self.lease_lost.is_set()
        )

    def on_signal(self, *_: object) -> None:
        """SIGTERM handler: the recipe sees `cancelled()`, and calls to the control plane
        stop retrying soon, so the worker exits within the executor's grace whatever the
        control plane's state. Writes plain attributes only: it takes no lock, because a
        handler runs on top of whatever the main thread was doing, and a second SIGTERM
        (the executor signals the process and its group) inside `Event.set` would
        deadlock on the Event's own lock."""
        self._signalled = True
        self._api.stop_retrying()

    def flush(self) -> None:
        self._ship_once()

    def close(self) -> None:
        self._stop.set()
        self._shipper.join(timeout=5)
        self._ship_once()

    def _ship_loop(self) -> None:
        heartbeat_s = min(HEARTBEAT_S, self._api.lease_s / 4)
        while not self._stop.wait(SHIP_INTERVAL_S):
            idle = time.monotonic() - self._api.last_answer >= heartbeat_s
            self._ship_once(heartbeat=idle)
            self._check_lease()

    def _check_lease(self) -> None:
        """Stop the attempt once the control plane was away longer than the lease."""
        if self.lease_lost.is_set() or not self._api.lease_expired():
            return
        away = time.monotonic() - self._api.last_answer
        logger.error(
            "control plane unreachable for %.1f s, longer than the worker lease (%s s, "
            "MODELFAB_WORKER_LEASE_S): stopping job %s attempt %d; events stay buffered",
            away,
            self._api.lease_s,
            self.job_id,
            self.attempt,
        )
        self._api.stop_retrying()
        self.lease_lost.set()

    def _ship_once(self, *, heartbeat: bool = False) -> None:
        """Ship the buffered events; with nothing to ship, call anyway when `heartbeat`."""
        with self._lock:
            batch, self._buffer = self._buffer, []
        if (not batch and not heartbeat) or self.attempt_over.is_set():
            return
        try:
            answer = self._api.events(batch)
        except AttemptOver:
            self.attempt_over.set()
            return
        except Exception as exc:
            logger.warning("could not ship %d events (%s); keeping them", len(batch), exc)
            with self._lock:
                self._buffer = (batch + self._buffer)[-MAX_BUFFER:]
            return
        if answer.get("cancel_requested"):
            self._cancel.set()
