"""The served-model protocol: what a replica, its LRU cache and its batcher know of a model.

Like LitServe's `LitAPI`, a served model is an open interface, not a closed union: a kind
(a class) implements `ServedModel`, and a task names its kind in its `TaskSpec`
(`served_model = "module:Class"`), so a new kind is a new module plus that line.

The request path through a kind: raw item bytes -> `decode` (opt-in `DecodesInput`;
images by default) -> `prepare` (one decoded item -> its units) -> `infer` (a batch of
prepared items, in the batcher's thread) -> `result` (one item's JSON fields).

Opt-in capabilities, checked with isinstance: `DecodesInput`, `ChecksOptions`, `Warmable`,
`HasAnswerFields` (fields of the whole answer, such as a detector's threshold),
`SlowResults` (results built in the thread pool rather than on the event loop) and
`ReportsStats` (its own figures in the replica's health answer).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from modelfab.errors import ModelfabError
from modelfab.schemas.endpoints import ModelStats
from modelfab.tasks import IMAGE_CLASSIFICATION

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 32
"""The largest batch a replica runs through one model unless told otherwise."""

MEMORY_FACTOR = 2.0
"""A loaded model's memory is estimated as its main file's size times this: ONNX Runtime
holds the weights (some pre-packed a second time for faster kernels) plus activation
buffers, which for small CNNs at batch <= 32 add up to roughly one more copy."""

ONNX_NAME, LABELS_NAME = "model.onnx", "labels.json"
"""The artifacts of the ONNX kinds (classifier, detector)."""


@dataclass
class ModelFiles:
    """A model version's files on this machine, as a loader hands them over."""

    version_id: str
    onnx_path: Path | None = None
    """The ONNX graph, for the kinds that run one (also in `paths` as "model.onnx")."""
    labels: dict[str, Any] = field(default_factory=dict)
    """labels.json, the model card: "task" names the task (image classification when
    absent), the rest is the kind's (a classifier's classes, image_size, mean, std, ...)."""
    paths: dict[str, Path] = field(default_factory=dict)
    """Artifact name -> local file, for every serving artifact of the task."""

    def __post_init__(self) -> None:
        if self.onnx_path is not None:
            self.paths.setdefault(ONNX_NAME, self.onnx_path)
        elif ONNX_NAME in self.paths:
            self.onnx_path = self.paths[ONNX_NAME]

    @property
    def task(self) -> str:
        """The task labels.json declares (image classification when it says none)."""
        return str(self.labels.get("task") or IMAGE_CLASSIFICATION)

    def path(self, name: str) -> Path:
        """The local file of artifact `name`. Raises ModelfabError "model_invalid"."""
        found = self.paths.get(name)
        if found is None:
            raise invalid(self, f"it has no {name}")
        return found

    def estimate_bytes(self) -> int:
        """The memory the loaded model is assumed to take: MEMORY_FACTOR times its ONNX
        graph, or without one, times all its files."""
        main = [self.onnx_path] if self.onnx_path is not None else list(self.paths.values())
        return int(sum(p.stat().st_size for p in main) * MEMORY_FACTOR)


@dataclass(frozen=True)
class LoadOptions:
    """How a replica (or batch inspection) wants its models loaded."""

    use_cuda: bool = False
    intra_op_threads: int | None = None
    allow_spinning: bool = False
    """Let ONNX Runtime's threads busy-wait between runs (off: they steal decode cycles)."""
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    hub_dir: Path | None = None
    """This node's hub folder: where a chat adapter's base model is found (chat kinds)."""


@runtime_checkable
class ServedModel(Protocol):
    """A model ready to serve. `infer` must be safe to call from a thread other than the
    one that loaded it; the replica runs one batch at a time per model."""

    task: str
    """The task it serves (echoed in every answer)."""
    version_id: str
    max_batch_size: int
    """Hint: the most units worth running through the model at once."""
    size_bytes: int
    """Its memory footprint, as the LRU cache counts it."""

    @classmethod
    def load(cls, files: ModelFiles, options: LoadOptions) -> ServedModel:
        """Load from `files` (blocks). Raises ModelfabError "model_invalid" when unusable."""
        ...

    def prepare(self, item: Any) -> Any:
        """One decoded input -> what `infer` takes for it. Blocks (CPU); runs in a pool.
        Raises InvalidRequest naming the item when it cannot be used."""
        ...

    def infer(self, items: Sequence[Any]) -> list[Any]:
        """One raw output per prepared item, in order. Blocks."""
        ...

    def result(self, raw: Any, options: Mapping[str, str]) -> dict[str, Any]:
        """One item's JSON fields from its raw output and the request's query options.
        Raises InvalidRequest naming a malformed option."""
        ...


@runtime_checkable
class DecodesInput(Protocol):
    """A kind whose inputs are not images: it turns an item's bytes into what `prepare`
    takes (kinds without it get `serving.inputs.decode_image`)."""

    def decode(self, name: str, data: bytes) -> Any:
        """Raises InvalidRequest (param `name`) when `data` is not a usable input."""
        ...


@runtime_checkable
class ChecksOptions(Protocol):
    """A kind that checks a request's query options before any input is decoded."""

    def check_options(self, options: Mapping[str, str]) -> None:
        """Raises InvalidRequest naming the malformed option."""
        ...


@runtime_checkable
class Warmable(Protocol):
    """A kind that can pay its lazy initialisation before its first request."""

    def warm(self) -> None:
        """Run one dummy input through the model. Blocks."""
        ...


@runtime_checkable
class HasAnswerFields(Protocol):
    """A kind that adds fields to the whole answer (next to "task"), such as a threshold."""

    def answer_fields(self, options: Mapping[str, str]) -> dict[str, Any]: ...


@runtime_checkable
class Closes(Protocol):
    """A kind that holds more than memory (a thread, an engine): the cache closes it when it
    evicts it, and the replica when it stops."""

    def close(self) -> None: ...


@runtime_checkable
class SlowResults(Protocol):
    """A kind whose `result` is costly (e.g. encodes PNGs): the replica builds them in its
    thread pool, in parallel, rather than on the event loop."""

    slow_results: bool


@runtime_checkable
class ReportsStats(Protocol):
    """A kind that knows more of its load than the batcher does (a chat model's engine):
    the replica's /health answer carries its `stats` instead of the batcher's queue."""

    def stats(self) -> ModelStats:
        """Its figures now. Must not block: the controller's probe calls it every pass."""
        ...


def invalid(files: ModelFiles, why: str) -> ModelfabError:
    """The "model_invalid" error for a version that cannot be served, saying why."""
    return ModelfabError(
        f"model version {files.version_id} cannot be served: {why}; re-export or retrain it",
        code="model_invalid",
        param="version_id",
    )
