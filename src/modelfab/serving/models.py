"""Served models on a replica: `load_model` picks a model's kind through the task registry,
and `ModelCache` keeps loaded models, LRU, within a memory budget.

A kind is any class that implements `serving.protocol.ServedModel`; the task a version's
labels.json names (`ModelFiles.task`) says which, through its `TaskSpec.served_model`
import string. The built-in kinds are the classifier (`serving.classifier.LoadedModel`)
and the anomaly detector (`serving.anomaly.AnomalyModel`); the cache and the replica app
know only the protocol. The names re-exported here keep older imports working.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelfab.artifacts import verified_file
from modelfab.errors import InvalidRequest
from modelfab.serving.anomaly import AnomalyModel
from modelfab.serving.classifier import EVAL_RESIZE_RATIO, LoadedModel, softmax
from modelfab.serving.onnx import CPU, CUDA, choose_providers, estimate_bytes
from modelfab.serving.protocol import (
    DEFAULT_MAX_BATCH_SIZE,
    LABELS_NAME,
    MEMORY_FACTOR,
    ONNX_NAME,
    Closes,
    LoadOptions,
    ModelFiles,
    ServedModel,
    invalid,
)
from modelfab.tasks import get_task

logger = logging.getLogger(__name__)

__all__ = [
    "CPU",
    "CUDA",
    "DEFAULT_MAX_BATCH_SIZE",
    "EVAL_RESIZE_RATIO",
    "MEMORY_FACTOR",
    "AnomalyModel",
    "LoadOptions",
    "LoadedModel",
    "ModelCache",
    "ModelFiles",
    "ServedModel",
    "choose_providers",
    "estimate_bytes",
    "fetch_files",
    "kind_for",
    "load_model",
    "softmax",
]


def fetch_files(version_id: str, refs: Mapping[str, Any]) -> ModelFiles:
    """The version's files from the control plane's answer (`WorkerAPI.model_files`):
    each artifact of refs["artifacts"] (or the older {onnx, labels}) sha256-checked on the
    way, labels.json parsed, and the version's task kept in `labels["task"]` when it says
    none. Blocks (reads, maybe downloads). Raises ModelfabError for a corrupt artifact."""
    named: dict[str, Any] = dict(refs.get("artifacts") or {})
    for key, name in (("onnx", ONNX_NAME), ("labels", LABELS_NAME)):
        if refs.get(key) is not None:
            named.setdefault(name, refs[key])
    paths = {name: verified_file(ref) for name, ref in named.items()}
    labels_path = paths.get(LABELS_NAME)
    labels: dict[str, Any] = json.loads(labels_path.read_text()) if labels_path else {}
    if refs.get("task"):
        labels.setdefault("task", refs["task"])
    return ModelFiles(version_id=version_id, labels=labels, paths=paths)


def kind_for(files: ModelFiles) -> type[ServedModel]:
    """The served-model class of the task `files` declares. Raises ModelfabError
    "model_invalid" for an unknown task or one without a served-model kind."""
    try:
        spec = get_task(files.task)
    except InvalidRequest as exc:
        raise invalid(files, f"its task {files.task!r} is not one a replica serves") from exc
    if spec.served_model is None:
        raise invalid(files, f"its task {files.task!r} is not one a replica serves")
    module, _, name = spec.served_model.partition(":")
    kind: type[ServedModel] = getattr(importlib.import_module(module), name)
    return kind


def load_kind(files: ModelFiles, options: LoadOptions) -> ServedModel:
    """`kind_for(files).load(files, options)`. Blocks. Raises ModelfabError
    "model_invalid" when the task, its kind or the files are unusable."""
    return kind_for(files).load(files, options)


def load_model(
    files: ModelFiles,
    *,
    use_cuda: bool = False,
    intra_op_threads: int | None = None,
    allow_spinning: bool = False,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> ServedModel:
    """The model of `files`, of the kind its task names (see `load_kind`)."""
    options = LoadOptions(use_cuda, intra_op_threads, allow_spinning, max_batch_size)
    return load_kind(files, options)


@dataclass
class _Slot:
    """A cache entry: the model once loaded (or the load in progress) and its users."""

    loading: Future[ServedModel] = field(default_factory=Future)
    model: ServedModel | None = None
    users: int = 0


class ModelCache:
    """Loads models (any `ServedModel` kind) on first use and keeps them, least recently
    used first out, within `budget_bytes` (estimated with `ModelFiles.estimate_bytes`
    before a load, the model's `size_bytes` after).

    Evictions happen when a model loads (to make room before its session is created, and
    again once it is in). The budget is a soft cap: models in use (leased) are never
    evicted, so the loaded ones may add up to more until the next load; a model that alone
    exceeds the budget still loads, evicting everything idle. All methods are thread-safe;
    concurrent first requests for one model load it once.
    """

    def __init__(
        self,
        loader: Callable[[str], ModelFiles],
        *,
        budget_bytes: int,
        use_cuda: bool = False,
        intra_op_threads: int | None = None,
        allow_spinning: bool = False,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        hub_dir: Path | None = None,
    ) -> None:
        """`loader(version_id)` returns the model's files (it may fetch them, and may raise
        ModelfabError, e.g. NotFound, which `get`/`lease` let through unchanged). The other
        options are passed to `load_model` for every model."""
        self._loader = loader
        self.budget_bytes = budget_bytes
        self._options = LoadOptions(
            use_cuda, intra_op_threads, allow_spinning, max_batch_size, hub_dir
        )
        self._lock = threading.Lock()
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # least recently used first

    def get(self, version_id: str) -> ServedModel:
        """The model, loading it first if needed (blocks for the load). It is not pinned:
        use `lease` around work that must not see the model evicted meanwhile."""
        with self.lease(version_id) as model:
            return model

    def peek(self, version_id: str) -> ServedModel | None:
        """The model when it is loaded (marking it used), else None. Never blocks on a
        load, so the event loop may call it."""
        with self._lock:
            slot = self._slots.get(version_id)
            if slot is None or slot.model is None:
                return None
            self._slots.move_to_end(version_id)
            return slot.model

    @contextmanager
    def lease(self, version_id: str) -> Iterator[ServedModel]:
        """The model, pinned in the cache (not evictable) until the block exits."""
        slot = self._acquire(version_id)
        try:
            yield slot.loading.result()  # re-raises a failed load's error in every waiter
        finally:
            with self._lock:  # evictions happen on loads only, so a lone big model stays
                slot.users -= 1

    def close(self) -> None:
        """Close every loaded model that holds more than memory (`Closes`): the replica is
        stopping."""
        with self._lock:
            models = [s.model for s in self._slots.values() if s.model is not None]
        for model in models:
            if isinstance(model, Closes):
                model.close()

    def loaded(self) -> list[str]:
        """Version ids of the loaded models, least recently used first."""
        with self._lock:
            return [v for v, slot in self._slots.items() if slot.model is not None]

    def models(self) -> list[tuple[str, ServedModel]]:
        """(version id, model) of the loaded models, least recently used first; unlike
        `peek`, marks none of them used (the health probe reads them)."""
        with self._lock:
            return [(v, slot.model) for v, slot in self._slots.items() if slot.model is not None]

    def used_bytes(self) -> int:
        """Estimated memory of the loaded models."""
        with self._lock:
            return sum(s.model.size_bytes for s in self._slots.values() if s.model is not None)

    def _acquire(self, version_id: str) -> _Slot:
        """Mark the slot in use (creating it when new) and make it most recently used."""
        with self._lock:
            slot = self._slots.get(version_id)
            if slot is None:
                slot = self._slots[version_id] = _Slot()
                slot.loading.set_running_or_notify_cancel()
                owner = True
            else:
                self._slots.move_to_end(version_id)
                owner = False
            slot.users += 1
        if owner:
            self._load(version_id, slot)
        return slot

    def _load(self, version_id: str, slot: _Slot) -> None:
        """Load into `slot` (outside the lock) and settle its future. On error, forget the
        slot (the next request tries again), release this caller's use and re-raise."""
        try:
            files = self._loader(version_id)
            with self._lock:  # make room first: the new session must fit, not just the old
                self._evict(keep=slot, incoming=files.estimate_bytes())
            model = load_kind(files, self._options)
        except BaseException as exc:
            with self._lock:
                slot.users -= 1
                if self._slots.get(version_id) is slot:
                    del self._slots[version_id]
            slot.loading.set_exception(exc)
            raise
        with self._lock:
            slot.model = model
            self._evict(keep=slot)
        slot.loading.set_result(model)
        logger.info("loaded model %s (%.1f MB est.)", version_id, model.size_bytes / 1e6)

    def _evict(self, keep: _Slot | None, incoming: int = 0) -> None:
        """Drop idle loaded models, least recently used first, until the loaded ones plus
        `incoming` fit the budget. Call with the lock held."""
        used = incoming + sum(s.model.size_bytes for s in self._slots.values() if s.model)
        for version_id, slot in list(self._slots.items()):
            if used <= self.budget_bytes:
                return
            if slot is keep or slot.users > 0 or slot.model is None:
                continue
            del self._slots[version_id]
            used -= slot.model.size_bytes
            if isinstance(slot.model, Closes):
                slot.model.close()  # an idle engine's thread; nothing is leased from it
            logger.info("evicted model %s to stay within the memory budget", version_id)
