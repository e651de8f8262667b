"""Trained models as the replica runs them: an ONNX Runtime session with its labels, and an
LRU cache of them within a memory budget.

`load_model` picks the kind by labels["task"]: an image classifier (`LoadedModel`, here)
or an anomaly detector (`AnomalyModel`, in `serving.anomaly`). Both answer the same calls:
`prepare` one decoded image into its units (float32 (U, 3, S, S)), `infer` a batch of
prepared images (one raw output each), `result` for one image's JSON fields.

Classifier preprocessing is Pillow + numpy (no torch on a replica) and reproduces the eval
transform of `modelfab.recipes.vision.data.build_transform` exactly: torchvision applies
Pillow's own bilinear resize to a PIL image, so the only differences are float rounding
(~1e-6).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from modelfab.errors import InvalidRequest, ModelfabError
from modelfab.serving.anomaly import ANOMALY_DETECTION, AnomalyModel

logger = logging.getLogger(__name__)

EVAL_RESIZE_RATIO = 1.14
"""As in `recipes.vision.data`: the resize when labels.json has no "resize" (older models)."""

MEMORY_FACTOR = 2.0
"""A loaded model's memory is estimated as its .onnx file size times this: ONNX Runtime
holds the weights (some pre-packed a second time for faster kernels) plus activation
buffers, which for small CNNs at batch <= 32 add up to roughly one more copy."""

DEFAULT_MAX_BATCH_SIZE = 32
"""The largest batch a replica runs through one model unless told otherwise."""

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

IMAGE_CLASSIFICATION = "image-classification"
"""labels["task"] of a classifier (older classifiers' labels have no "task")."""


@dataclass
class ModelFiles:
    """A model version's files on this machine, as a loader hands them over."""

    version_id: str
    onnx_path: Path
    labels: dict[str, Any]
    """labels.json: for a classifier classes, image_size, mean, std, input, output, resize,
    interpolation; for a detector task "anomaly-detection" and what `serving.anomaly`
    reads."""


def model_task(labels: Mapping[str, Any]) -> str:
    """The task a model's labels.json declares (image classification when it says none)."""
    return str(labels.get("task") or IMAGE_CLASSIFICATION)


def load_model(
    files: ModelFiles,
    *,
    use_cuda: bool = False,
    intra_op_threads: int | None = None,
    allow_spinning: bool = False,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> ServedModel:
    """The model of `files`, of the kind labels["task"] names; the options are those of
    `LoadedModel`. Blocks (reads and optimises the graph). Raises ModelfabError code
    "model_invalid" for an unknown task, unusable labels or an unloadable .onnx file."""
    task = model_task(files.labels)
    if task == IMAGE_CLASSIFICATION:
        return LoadedModel(
            files,
            use_cuda=use_cuda,
            intra_op_threads=intra_op_threads,
            allow_spinning=allow_spinning,
            max_batch_size=max_batch_size,
        )
    if task != ANOMALY_DETECTION:
        raise _invalid(files, f"its task {task!r} is not one a replica serves")
    return AnomalyModel(
        files.version_id,
        files.labels,
        _session(files, use_cuda, intra_op_threads, allow_spinning),
        size_bytes=estimate_bytes(files.onnx_path),
        max_batch_size=max_batch_size,
    )


def choose_providers(use_cuda: bool) -> list[str]:
    """CUDA then CPU when `use_cuda` and ONNX Runtime has CUDA; otherwise CPU only."""
    if use_cuda and CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    return [CPU]


def estimate_bytes(onnx_path: Path) -> int:
    """The memory a loaded model is assumed to take (see MEMORY_FACTOR)."""
    return int(onnx_path.stat().st_size * MEMORY_FACTOR)


class LoadedModel:
    """An image classifier ready to run: `prepare` (or `preprocess`) one image, `infer`
    prepared images (or `predict` a batch), `result` for one image's answer.

    `infer` and `predict` are safe to call from several threads (ONNX Runtime sessions
    are), though the replica runs one batch at a time per model.
    """

    task = IMAGE_CLASSIFICATION

    def __init__(
        self,
        files: ModelFiles,
        *,
        use_cuda: bool = False,
        intra_op_threads: int | None = None,
        allow_spinning: bool = False,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    ) -> None:
        """Create the session (blocks: reads and optimises the graph). Raises ModelfabError
        code "model_invalid" when the labels or the .onnx file are unusable.

        `allow_spinning` lets ONNX Runtime's worker threads busy-wait between runs (its
        default); off here because a replica decodes and preprocesses images on the same
        cores, and spinning workers take those cycles (measured: up to 2x slower on a
        loaded 2-core machine)."""
        self.version_id = files.version_id
        self.labels = files.labels
        self.max_batch_size = max_batch_size
        """Hint: the largest batch worth running through this model at once."""
        self.size_bytes = estimate_bytes(files.onnx_path)
        try:
            self.classes: list[str] = [str(c) for c in files.labels["classes"]]
            self.image_size = int(files.labels["image_size"])
            self.resize = int(files.labels.get("resize", self.image_size * EVAL_RESIZE_RATIO))
            mean = np.asarray(files.labels["mean"], dtype=np.float32).reshape(3)
            std = np.asarray(files.labels["std"], dtype=np.float32).reshape(3)
            self.input_name = str(files.labels.get("input", "images"))
            self.output_name = str(files.labels.get("output", "logits"))
        except (KeyError, TypeError, ValueError) as exc:
            raise _invalid(files, f"its labels.json is incomplete ({exc!r})") from exc
        if self.resize < self.image_size:  # training would have padded; never exported so
            raise _invalid(files, f"resize {self.resize} < image_size {self.image_size}")
        # (x / 255 - mean) / std folded into one multiply-add per pixel.
        self._scale = (1.0 / (255.0 * std)).astype(np.float32)
        self._shift = (-mean / std).astype(np.float32)
        self.session = _session(files, use_cuda, intra_op_threads, allow_spinning)
        self.providers: list[str] = list(self.session.get_providers())

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> float32 (3, image_size, image_size): resize the short side to
        `resize` (Pillow bilinear, antialiased), centre-crop, scale to [0, 1], normalise."""
        image = image.convert("RGB") if image.mode != "RGB" else image
        w, h = image.size
        # torchvision's rule: the short side becomes `resize`, the long side is truncated.
        if w <= h:
            size = (self.resize, int(self.resize * h / w))
        else:
            size = (int(self.resize * w / h), self.resize)
        if size != (w, h):
            image = image.resize(size, Image.Resampling.BILINEAR)
        c = self.image_size
        left = round((size[0] - c) / 2.0)
        top = round((size[1] - c) / 2.0)
        image = image.crop((left, top, left + c, top + c))
        # HWC uint8 -> contiguous CHW float32, then in-place per-channel ops over long
        # contiguous rows: ~2x faster than broadcasting over the 3-wide last axis.
        chw = np.ascontiguousarray(np.asarray(image).astype(np.float32).transpose(2, 0, 1))
        chw *= self._scale[:, None, None]
        chw += self._shift[:, None, None]
        return chw

    def prepare(self, image: Image.Image) -> np.ndarray:
        """`preprocess` as the one unit of the image: float32 (1, 3, S, S)."""
        return self.preprocess(image)[None]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, H, W) -> softmax probabilities (N, classes), float32. Blocks."""
        logits = self.session.run([self.output_name], {self.input_name: batch})[0]
        return softmax(np.asarray(logits, dtype=np.float32))

    def infer(self, items: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Probabilities (classes,) per prepared image (1, 3, S, S), `predict`ed at most
        `max_batch_size` at a time. Blocks. Raises ValueError for an item of several units."""
        if any(len(item) != 1 for item in items):
            raise ValueError("a classifier's items are single images (1, 3, S, S)")
        batch = np.concatenate(items)
        step = self.max_batch_size
        probs = [self.predict(batch[i : i + step]) for i in range(0, len(batch), step)]
        return list(np.concatenate(probs))

    def check_options(self, options: Mapping[str, str]) -> None:
        """Raises InvalidRequest (param "top_k") unless top_k is absent or in [1, classes]."""
        self._top_k(options)

    def result(self, raw: np.ndarray, options: Mapping[str, str]) -> dict[str, Any]:
        """The best label and score, and the `top_k` option's best classes (default 1)
        with their scores. Raises InvalidRequest (param "top_k") for a bad top_k."""
        best = np.argsort(-raw, kind="stable")[: self._top_k(options)]
        ranked = [{"label": self.classes[j], "score": float(raw[j])} for j in best]
        return {**ranked[0], "top_k": ranked}

    def _top_k(self, options: Mapping[str, str]) -> int:
        raw = options.get("top_k")
        if raw is None:
            return 1
        if not raw.strip().isdigit() or int(raw) < 1:
            raise InvalidRequest("top_k must be a positive integer", param="top_k")
        if int(raw) > len(self.classes):
            raise InvalidRequest(
                f"top_k must be at most {len(self.classes)}, the number of classes",
                param="top_k",
            )
        return int(raw)

    def warm(self) -> None:
        """Run one dummy image through the model, so the first request does not pay for
        lazy initialisation (CUDA kernels, memory arenas)."""
        self.predict(np.zeros((1, 3, self.image_size, self.image_size), dtype=np.float32))


ServedModel = LoadedModel | AnomalyModel
"""A model as a replica serves it; `task` tells which."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    out: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return out


def _session(
    files: ModelFiles, use_cuda: bool, intra_op_threads: int | None, allow_spinning: bool
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", str(int(allow_spinning)))
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    try:
        return ort.InferenceSession(
            str(files.onnx_path), sess_options=options, providers=choose_providers(use_cuda)
        )
    except Exception as exc:  # ORT raises its own untyped errors for bad graphs
        raise _invalid(files, f"ONNX Runtime cannot load it ({exc})") from exc


def _invalid(files: ModelFiles, why: str) -> ModelfabError:
    return ModelfabError(
        f"model version {files.version_id} cannot be served: {why}; re-export or retrain it",
        code="model_invalid",
        param="version_id",
    )


@dataclass
class _Slot:
    """A cache entry: the model once loaded (or the load in progress) and its users."""

    loading: Future[ServedModel] = field(default_factory=Future)
    model: ServedModel | None = None
    users: int = 0


class ModelCache:
    """Loads models on first use and keeps them, least recently used first out, within
    `budget_bytes` (estimated with `estimate_bytes`).

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
    ) -> None:
        """`loader(version_id)` returns the model's files (it may fetch them, and may raise
        ModelfabError, e.g. NotFound, which `get`/`lease` let through unchanged). The other
        options are passed to `load_model` for every model."""
        self._loader = loader
        self.budget_bytes = budget_bytes
        self._model_options: dict[str, Any] = {
            "use_cuda": use_cuda,
            "intra_op_threads": intra_op_threads,
            "allow_spinning": allow_spinning,
            "max_batch_size": max_batch_size,
        }
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

    def loaded(self) -> list[str]:
        """Version ids of the loaded models, least recently used first."""
        with self._lock:
            return [v for v, slot in self._slots.items() if slot.model is not None]

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
                self._evict(keep=slot, incoming=estimate_bytes(files.onnx_path))
            model = load_model(files, **self._model_options)
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
            logger.info("evicted model %s to stay within the memory budget", version_id)
