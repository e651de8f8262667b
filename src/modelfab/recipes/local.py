"""`LocalContext`: a `RecipeContext` that runs any recipe in this process, without a
platform: for tests, benchmarks and notebooks.

    ctx = LocalContext(tmp, dataset_path=folder)
    result = run_recipe("image-classification", {"epochs": 3}, ctx)
    ctx.model, ctx.artifacts, ctx.events_of("metrics")

It keeps what a worker would ship: events (metrics are events of type `metrics`, as the
worker sends them), uploaded artifacts (copied under `workdir/artifacts`), the models the
recipe registers and the URL a replica announces. It also has the opt-in capabilities
(`FetchesModels` and `FetchesModelArtifacts` from `models`, `AnnouncesServing`, `HasHub`).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modelfab.artifacts import hash_path
from modelfab.errors import NotFound
from modelfab.recipes.base import run_recipe

__all__ = ["LocalContext", "file_ref", "run_recipe"]

logger = logging.getLogger(__name__)

DEFAULT_RESOURCES: dict[str, Any] = {"gpus": 0.0, "cpus": 1.0, "memory_bytes": 0}


def file_ref(path: Path) -> dict[str, str]:
    """The `{uri, sha256}` reference the platform hands out for a file (blocks while hashing)."""
    return {"uri": path.resolve().as_uri(), "sha256": hash_path(path)[0]}


class LocalContext:
    """Everything a recipe reports, kept in lists; nothing leaves the process.

    `models` maps a model version id to its files by role (`onnx`, `labels`) or, for
    `model_artifacts`, by artifact name, for recipes that load registered models.
    `cancel_after` N: `cancelled()` answers False N times, then True (a cancel mid-run,
    deterministically); `cancel()` makes it True at once. `on_event(item)` sees each event
    before it is kept; what it raises reaches the recipe (a test can simulate a crash at a
    chosen point)."""

    def __init__(
        self,
        workdir: Path,
        *,
        dataset: dict[str, Any] | None = None,
        dataset_path: Path | None = None,
        base_weights: Path | None = None,
        hub_dir: Path | None = None,
        resources: Mapping[str, Any] | None = None,
        job_id: str = "job_local",
        attempt: int = 1,
        models: Mapping[str, Mapping[str, Path]] | None = None,
        cancel_after: int | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.dataset = dataset
        self.dataset_path = dataset_path
        self.base_weights = base_weights
        self.hub_dir = hub_dir
        self.resources: dict[str, Any] = {**DEFAULT_RESOURCES, **(resources or {})}
        self.workdir = workdir
        self.models = dict(models or {})
        self.cancel_after = cancel_after
        self.on_event = on_event
        self.events: list[dict[str, Any]] = []
        self.artifacts: list[dict[str, Any]] = []
        self.models_registered: list[dict[str, Any]] = []
        """Every model the recipe registered, in order; `model` is the last."""
        self.serving_url: str | None = None
        self.serving_secret: str | None = None
        """What a `serve` recipe announced: its URL and the secret its server asks for."""
        self.cancel_checks = 0
        self._cancel = threading.Event()
        self._lock = threading.Lock()  # recipes may report from their worker threads

    # -- Reporter ---------------------------------------------------------------------------

    def event(
        self,
        message: str,
        *,
        type: str = "message",
        level: str = "info",
        data: dict[str, Any] | None = None,
    ) -> None:
        item = {"message": message, "type": type, "level": level, "data": data, "at": time.time()}
        if self.on_event is not None:
            self.on_event(item)
        with self._lock:
            self.events.append(item)

    def metrics(self, step: int | None = None, **values: float) -> None:
        data: dict[str, Any] = dict(values)
        if step is not None:
            data["step"] = step
        self.event(" ".join(f"{k}={v}" for k, v in data.items()), type="metrics", data=data)

    def cancelled(self) -> bool:
        with self._lock:
            self.cancel_checks += 1
            checks = self.cancel_checks
        late = self.cancel_after is not None and checks > self.cancel_after
        return late or self._cancel.is_set()

    # -- RecipeContext ----------------------------------------------------------------------

    def upload_artifact(self, path: Path, *, name: str, format: str) -> dict[str, Any]:
        """Copy `path` to `workdir/artifacts/<sha256>/<name>`; the record is the worker's."""
        sha256, size = hash_path(path)
        dest = self.workdir / "artifacts" / sha256 / Path(name).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        record = {
            "object": "artifact",
            "name": name,
            "format": format,
            "uri": dest.resolve().as_uri(),
            "sha256": sha256,
            "size_bytes": size,
        }
        with self._lock:
            self.artifacts.append(record)
        return record

    def register_model(self, model: dict[str, Any]) -> None:
        with self._lock:
            self.models_registered.append(model)

    @property
    def model(self) -> dict[str, Any] | None:
        """The model the recipe registered last (None before any)."""
        return self.models_registered[-1] if self.models_registered else None

    def flush(self) -> None:
        pass

    # -- capabilities -----------------------------------------------------------------------

    def model_files(self, version_id: str) -> dict[str, Any]:
        """References to the files given in `models`; raises NotFound for another id."""
        if version_id not in self.models:
            raise NotFound(f"no model version {version_id!r} in this context", param="model")
        files = self.models[version_id]
        return {"version_id": version_id, **{role: file_ref(p) for role, p in files.items()}}

    def model_artifacts(self, version_id: str) -> dict[str, Any]:
        """Every file given in `models` for `version_id`, by name; NotFound for another id."""
        if version_id not in self.models:
            raise NotFound(f"no model version {version_id!r} in this context", param="model")
        files = self.models[version_id]
        artifacts = {name: file_ref(p) for name, p in files.items()}
        return {"version_id": version_id, "task": None, "artifacts": artifacts}

    def announce_serving(self, url: str, secret: str) -> None:
        self.serving_url, self.serving_secret = url, secret
        logger.info("job %s serving at %s", self.job_id, url)

    # -- for the caller ---------------------------------------------------------------------

    def cancel(self) -> None:
        """Make `cancelled()` true from now on (thread-safe: call it while the recipe runs)."""
        self._cancel.set()

    def events_of(self, type: str) -> list[dict[str, Any]]:
        """The events of `type` (message, metrics, checkpoint, progress), in order."""
        with self._lock:
            return [e for e in self.events if e["type"] == type]

    @property
    def metric_rows(self) -> list[dict[str, Any]]:
        """The data of each metrics event: its values, and `step` when one was given."""
        return [e["data"] for e in self.events_of("metrics")]
