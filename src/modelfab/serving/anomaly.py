"""Anomaly detectors (PatchCore exported to ONNX) as a replica runs them: preprocessing,
tiling, stitching and smoothing of anomaly maps, verdicts, and heatmap PNGs.

Torch-free (numpy, Pillow, ONNX Runtime). The map helpers reproduce the torch versions of
`modelfab.recipes.anomaly.maps` (which imports `tile_starts` from here, so tiles are cut
by one implementation): `stitch` exactly, `gaussian_blur` up to float rounding (~1e-6).
Preprocessing reproduces `recipes.anomaly.inputs.ImagePrep` for PIL images.

The model's graph and labels.json are described by the exporter,
`modelfab.recipes.anomaly.export`: input "images" (N, 3, S, S) normalised, outputs
"scores" (N,) and "maps" (N, S, S).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from modelfab.errors import InvalidRequest, ModelfabError
from modelfab.imaging import to_rgb
from modelfab.serving.onnx import open_session
from modelfab.serving.protocol import LoadOptions, ModelFiles
from modelfab.tasks import ANOMALY_DETECTION as ANOMALY_DETECTION  # re-exported

Offset = tuple[int, int]
"""(top, left) of a tile in the scored image, in pixels."""

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


# --------------------------------------------------------------------------- maps


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering [0, length) with about `overlap`
    (a fraction of `tile`) between neighbours; the last tile ends exactly at `length`.
    Raises ValueError when length < tile."""
    if length < tile:
        raise ValueError(f"a side of {length} px is shorter than the {tile} px tile")
    stride = max(1, round(tile * (1 - overlap)))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tile_offsets(height: int, width: int, tile: int, overlap: float) -> list[Offset]:
    """(top, left) of every tile of a `height` x `width` image, row-major. Raises
    ValueError when a side is shorter than `tile`."""
    return [
        (top, left)
        for top in tile_starts(height, tile, overlap)
        for left in tile_starts(width, tile, overlap)
    ]


def stitch(tile_maps: np.ndarray, offsets: Sequence[Offset], size: tuple[int, int]) -> np.ndarray:
    """Tile maps (T, t, t) at `offsets` -> one float32 (H, W) map, averaging where tiles
    overlap (pixels no tile covers are 0). Raises ValueError when the counts differ."""
    if len(tile_maps) != len(offsets):
        raise ValueError(f"{len(tile_maps)} tile maps for {len(offsets)} offsets")
    total = np.zeros(size, dtype=np.float32)
    count = np.zeros(size, dtype=np.float32)
    side = tile_maps.shape[-1]
    for tile_map, (top, left) in zip(tile_maps, offsets, strict=True):
        total[top : top + side, left : left + side] += tile_map
        count[top : top + side, left : left + side] += 1
    out: np.ndarray = total / np.maximum(count, 1)
    return out


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian (float64) of 2 * ceil(4 * sigma) + 1 taps."""
    radius = math.ceil(4 * sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    out: np.ndarray = kernel / kernel.sum()
    return out


def gaussian_blur(amap: np.ndarray, sigma: float) -> np.ndarray:
    """A (H, W) map smoothed with a separable Gaussian of `sigma` pixels, as float32;
    borders replicate the edge, so any map size works. sigma <= 0 returns it unchanged."""
    if sigma <= 0:
        return amap
    kernel = gaussian_kernel(sigma)
    rows = _convolve(np.asarray(amap, dtype=np.float64), kernel, axis=1)
    return _convolve(rows, kernel, axis=0).astype(np.float32)


def _convolve(values: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """`values` correlated with the symmetric `kernel` along `axis`, edge-padded."""
    radius = len(kernel) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    padded = np.pad(values, pad, mode="edge")
    length = values.shape[axis]
    out = np.zeros_like(values)
    for i, weight in enumerate(kernel):  # one vectorised pass per tap
        out += weight * padded.take(range(i, i + length), axis=axis)
    return out


def encode_heatmap(amap: np.ndarray, scale: float) -> dict[str, Any]:
    """The answer's "heatmap" object: `amap` (H, W) as a base64 8-bit greyscale PNG,
    pixel = round(clip(map / scale, 0, 1) * 255). Raises ValueError when scale <= 0."""
    if not scale > 0:
        raise ValueError(f"the heatmap scale must be positive, got {scale}")
    pixels = np.rint(np.clip(amap / scale, 0.0, 1.0) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    height, width = pixels.shape
    return {
        "format": "png",
        "encoding": "base64",
        "width": width,
        "height": height,
        "scale": scale,
        "data": base64.b64encode(buf.getvalue()).decode("ascii"),
    }


# --------------------------------------------------------------------------- the model


class Units(np.ndarray):
    """The units (U, 3, S, S) float32 of one image (U tiles, or 1), carrying where they
    go: `offsets` (U of them, (top, left)) and `scored_size`, the (H, W) the image is
    scored at (not `size`: ndarray's own element count). Where a plain ndarray of one
    unit is given instead, it is read as an untiled S x S image."""

    offsets: list[Offset]
    scored_size: tuple[int, int]

    def __new__(
        cls, units: np.ndarray, offsets: Sequence[Offset], scored_size: tuple[int, int]
    ) -> Units:
        obj = np.asarray(units, dtype=np.float32).view(cls)
        obj.offsets = list(offsets)
        obj.scored_size = scored_size
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        if obj is not None:  # views and slices keep the layout of what they view
            self.offsets = getattr(obj, "offsets", [(0, 0)])
            self.scored_size = getattr(obj, "scored_size", (0, 0))


@dataclass(frozen=True)
class DetectorOutput:
    """The raw result of one image: its units' scores and maps, and where they go."""

    scores: np.ndarray
    """(U,) float32 score per unit."""
    maps: np.ndarray
    """(U, S, S) float32 map per unit."""
    offsets: list[Offset]
    size: tuple[int, int]
    """(H, W) the image was scored at: the final map's size."""


@dataclass(frozen=True)
class DetectorSpec:
    """What a detector's labels.json says (see the module docstring of the exporter)."""

    image_size: int
    mean: np.ndarray
    std: np.ndarray
    input_name: str
    output_names: tuple[str, str]
    threshold: float | None
    tiling: bool
    tile_overlap: float
    sigma: float
    maps_blurred: bool
    map_scale: float

    @classmethod
    def parse(cls, labels: Mapping[str, Any]) -> DetectorSpec:
        """Raises KeyError, TypeError or ValueError for missing or malformed fields."""
        threshold = labels.get("threshold")
        scores, maps = labels.get("outputs", ["scores", "maps"])
        spec = cls(
            image_size=int(labels["image_size"]),
            mean=np.asarray(labels["mean"], dtype=np.float32).reshape(3, 1, 1),
            std=np.asarray(labels["std"], dtype=np.float32).reshape(3, 1, 1),
            input_name=str(labels.get("input", "images")),
            output_names=(str(scores), str(maps)),
            threshold=None if threshold is None else float(threshold),
            tiling=bool(labels.get("tiling", False)),
            tile_overlap=float(labels.get("tile_overlap", 0.25)),
            sigma=float(labels.get("sigma", 0.0)),
            maps_blurred=bool(labels.get("maps_blurred", True)),
            map_scale=float(labels["map_scale"]),
        )
        if spec.image_size < 1 or not spec.map_scale > 0 or not 0 <= spec.tile_overlap < 1:
            raise ValueError("image_size, map_scale or tile_overlap is out of range")
        return spec


class AnomalyModel:
    """An anomaly detector ready to run (a `ServedModel`): `prepare` one image, `infer` a
    batch of prepared images, `result` for one image's answer. `infer` is thread-safe
    (ONNX Runtime sessions are). Its results stitch maps and encode PNGs, so the replica
    builds them in its pool (`slow_results`)."""

    task = ANOMALY_DETECTION
    slow_results = True

    def __init__(
        self,
        version_id: str,
        labels: dict[str, Any],
        session: ort.InferenceSession,
        *,
        size_bytes: int,
        max_batch_size: int,
    ) -> None:
        """Wrap an opened session. Raises ModelfabError code "model_invalid" (param
        "version_id") when labels.json is incomplete or malformed."""
        try:
            self.spec = DetectorSpec.parse(labels)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelfabError(
                f"model version {version_id} cannot be served: its labels.json is "
                f"incomplete or malformed ({exc!r}); re-export the detector",
                code="model_invalid",
                param="version_id",
            ) from exc
        self.version_id = version_id
        self.labels = labels
        self.session = session
        self.size_bytes = size_bytes
        self.max_batch_size = max_batch_size
        """The most units (tiles or images) run through the session at once."""
        self.providers: list[str] = list(session.get_providers())
        self.threshold: float | None = self.spec.threshold
        """The stored decision threshold; None when the detector was not calibrated."""
        self.map_scale: float = self.spec.map_scale
        """The map value drawn as 255 in heatmap PNGs."""

    @classmethod
    def load(cls, files: ModelFiles, options: LoadOptions) -> AnomalyModel:
        """See `ServedModel.load`: the session over model.onnx, the spec from labels.json."""
        return cls(
            files.version_id,
            files.labels,
            open_session(files, options),
            size_bytes=files.estimate_bytes(),
            max_batch_size=options.max_batch_size,
        )

    # -- preprocessing

    def scored_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) an image of this size is scored at: S x S without tiling; with
        tiling its own size, scaled up so that the short side is at least S."""
        size = self.spec.image_size
        if not self.spec.tiling:
            return size, size
        scale = max(1.0, size / min(height, width))
        return max(size, round(height * scale)), max(size, round(width * scale))

    def prepare(self, image: Image.Image) -> Units:
        """Any PIL image -> its units (U, 3, S, S), normalised: the image resized to S x S,
        or with tiling its overlapping S x S tiles, row-major. Blocks (CPU)."""
        rgb = to_rgb(image)
        height, width = self.scored_size(rgb.height, rgb.width)
        if (height, width) != (rgb.height, rgb.width):
            rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
        # The same float32 operations as training's ImagePrep, in CHW order.
        chw = np.ascontiguousarray(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1))
        chw /= np.float32(255)
        chw -= self.spec.mean
        chw /= self.spec.std
        size = self.spec.image_size
        if not self.spec.tiling:
            return Units(chw[None], [(0, 0)], (size, size))
        offsets = tile_offsets(height, width, size, self.spec.tile_overlap)
        tiles = np.stack([chw[:, y : y + size, x : x + size] for y, x in offsets])
        return Units(tiles, offsets, (height, width))

    # -- inference

    def infer(self, items: Sequence[np.ndarray]) -> list[DetectorOutput]:
        """One output per item (a `prepare` result), running the session on all their
        units at most `max_batch_size` at a time. Blocks. Raises ValueError for a plain
        array of several units (its layout is unknown: use `prepare`)."""
        layouts = [self._layout(item) for item in items]
        units = np.concatenate([np.asarray(item, dtype=np.float32) for item in items])
        scores, maps = self._run(units)
        outputs, start = [], 0
        for offsets, size in layouts:
            end = start + len(offsets)
            outputs.append(DetectorOutput(scores[start:end], maps[start:end], offsets, size))
            start = end
        return outputs

    def _layout(self, item: np.ndarray) -> tuple[list[Offset], tuple[int, int]]:
        if isinstance(item, Units):
            return item.offsets, item.scored_size
        if item.ndim != 4 or len(item) != 1:
            raise ValueError(f"a plain array must hold one unit (1, 3, S, S), got {item.shape}")
        return [(0, 0)], (self.spec.image_size, self.spec.image_size)

    def _run(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores (N,), maps (N, S, S)) of N units, in chunks of `max_batch_size`."""
        scores, maps = [], []
        for start in range(0, len(units), self.max_batch_size):
            chunk = units[start : start + self.max_batch_size]
            out = self.session.run(list(self.spec.output_names), {self.spec.input_name: chunk})
            scores.append(np.asarray(out[0], dtype=np.float32).reshape(len(chunk)))
            maps.append(np.asarray(out[1], dtype=np.float32))
        return np.concatenate(scores), np.concatenate(maps)

    def warm(self) -> None:
        """Run one dummy unit, so the first request does not pay for lazy initialisation."""
        size = self.spec.image_size
        self._run(np.zeros((1, 3, size, size), dtype=np.float32))

    # -- postprocessing

    def score(self, raw: DetectorOutput) -> float:
        """The image score: the largest of its units' scores."""
        return float(raw.scores.max())

    def score_map(self, raw: DetectorOutput) -> tuple[float, np.ndarray]:
        """(image score, final float32 (H, W) anomaly map): tile maps stitched (overlaps
        averaged), then smoothed with `sigma` unless the graph already did."""
        amap = stitch(raw.maps, raw.offsets, raw.size) if self.spec.tiling else raw.maps[0]
        if not self.spec.maps_blurred:
            amap = gaussian_blur(amap, self.spec.sigma)
        return self.score(raw), amap

    def check_options(self, options: Mapping[str, str]) -> None:
        """Raises InvalidRequest naming "threshold" or "heatmap" when one is malformed."""
        self.threshold_for(options)
        _bool_option(options, "heatmap", default=True)

    def answer_fields(self, options: Mapping[str, str]) -> dict[str, Any]:
        """The whole answer's "threshold": the one every item was judged by."""
        return {"threshold": self.threshold_for(options)}

    def threshold_for(self, options: Mapping[str, str]) -> float | None:
        """The request's `threshold` option, else the stored threshold (maybe None).
        Raises InvalidRequest (param "threshold") when it is not a finite number."""
        raw = options.get("threshold")
        if raw is None:
            return self.threshold
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InvalidRequest(
                f"threshold must be a finite number, got {raw!r}", param="threshold"
            )
        return value

    def result(self, raw: DetectorOutput, options: Mapping[str, str]) -> dict[str, Any]:
        """One image's answer: score, threshold, is_anomaly and label (null without a
        threshold), and the heatmap unless options["heatmap"] is false. Raises
        InvalidRequest naming a malformed option."""
        threshold = self.threshold_for(options)
        with_heatmap = _bool_option(options, "heatmap", default=True)
        if with_heatmap:
            score, amap = self.score_map(raw)
        else:
            score = self.score(raw)
        verdict = None if threshold is None else score >= threshold
        answer: dict[str, Any] = {
            "score": score,
            "threshold": threshold,
            "is_anomaly": verdict,
            "label": None if verdict is None else ("anomaly" if verdict else "good"),
        }
        if with_heatmap:
            answer["heatmap"] = encode_heatmap(amap, self.map_scale)
        return answer


def _bool_option(options: Mapping[str, str], name: str, *, default: bool) -> bool:
    """true/false (also 1/0, yes/no, on/off); raises InvalidRequest (param `name`)."""
    raw = options.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise InvalidRequest(f"{name} must be true or false, got {raw!r}", param=name)
