"""Image classifiers as a replica runs them: an ONNX Runtime session with its labels.

Preprocessing is Pillow + numpy (no torch on a replica) and reproduces the eval transform
of `modelfab.recipes.vision.data.build_transform` exactly: torchvision applies Pillow's
own bilinear resize to a PIL image, so the only differences are float rounding (~1e-6).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from modelfab.errors import InvalidRequest
from modelfab.serving.onnx import open_session
from modelfab.serving.protocol import DEFAULT_MAX_BATCH_SIZE, LoadOptions, ModelFiles, invalid
from modelfab.tasks import IMAGE_CLASSIFICATION

logger = logging.getLogger(__name__)

EVAL_RESIZE_RATIO = 1.14
"""As in `recipes.vision.data`: the resize when labels.json has no "resize" (older models)."""


class LoadedModel:
    """An image classifier ready to run (a `ServedModel`): `prepare` (or `preprocess`)
    one image, `infer` prepared images (or `predict` a batch), `result` for one image's
    answer.

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
        self.size_bytes = files.estimate_bytes()
        try:
            self.classes: list[str] = [str(c) for c in files.labels["classes"]]
            self.image_size = int(files.labels["image_size"])
            self.resize = int(files.labels.get("resize", self.image_size * EVAL_RESIZE_RATIO))
            mean = np.asarray(files.labels["mean"], dtype=np.float32).reshape(3)
            std = np.asarray(files.labels["std"], dtype=np.float32).reshape(3)
            self.input_name = str(files.labels.get("input", "images"))
            self.output_name = str(files.labels.get("output", "logits"))
        except (KeyError, TypeError, ValueError) as exc:
            raise invalid(files, f"its labels.json is incomplete ({exc!r})") from exc
        if self.resize < self.image_size:  # training would have padded; never exported so
            raise invalid(files, f"resize {self.resize} < image_size {self.image_size}")
        # (x / 255 - mean) / std folded into one multiply-add per pixel.
        self._scale = (1.0 / (255.0 * std)).astype(np.float32)
        self._shift = (-mean / std).astype(np.float32)
        options = LoadOptions(use_cuda, intra_op_threads, allow_spinning, max_batch_size)
        self.session = open_session(files, options)
        self.providers: list[str] = list(self.session.get_providers())

    @classmethod
    def load(cls, files: ModelFiles, options: LoadOptions) -> LoadedModel:
        """See `ServedModel.load`."""
        return cls(
            files,
            use_cuda=options.use_cuda,
            intra_op_threads=options.intra_op_threads,
            allow_spinning=options.allow_spinning,
            max_batch_size=options.max_batch_size,
        )

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
        """Raises InvalidRequest unless top_k is absent or in [1, classes] (param "top_k"),
        and naming the first other option (sorted) a classifier does not take, such as a
        detector's threshold. `heatmap=false` is taken: a client that does not know the
        model's kind may ask for no heatmaps, and a classifier draws none."""
        self._top_k(options)
        refused = sorted(k for k, v in options.items() if not _takes(k, v))
        if refused:
            raise InvalidRequest(
                f"{', '.join(refused)}: not {'options' if len(refused) > 1 else 'an option'} "
                "of this model: it is an image "
                "classifier, which takes only top_k (the number of best classes to answer)",
                param=refused[0],
            )

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


OPTIONS = frozenset({"top_k"})
"""The query options a classifier takes."""

_NO = frozenset({"false", "0", "no", "off"})


def _takes(name: str, value: str) -> bool:
    """Whether a classifier takes the option: its own, or a request for no heatmap."""
    return name in OPTIONS or (name == "heatmap" and value.strip().lower() in _NO)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    out: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return out
