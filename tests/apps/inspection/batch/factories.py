"""Test material for batch inspection: a tiny real ONNX anomaly detector built with
onnx.helper (torch-free, milliseconds), images with and without a bright defect, and a
recipe context that records what the recipe reports."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image

from modelfab.recipes.local import LocalContext
from modelfab.serving.models import ModelFiles
from tests.serving.factories import labels as classifier_labels
from tests.serving.factories import write_classifier

SIZE = 32
THRESHOLD = 0.5


def write_detector(
    folder: Path,
    *,
    image_size: int = SIZE,
    threshold: float | None = THRESHOLD,
    tiling: bool = False,
    sigma: float = 0.0,
) -> ModelFiles:
    """folder/model.onnx + labels.json of a detector as the exporter lays it out: "images"
    (N, 3, S, S) -> "maps" = mean over channels of |x| (N, S, S), "scores" = the largest
    map value (N,). With mean = std = 0.5, mid-grey scores ~0 and white or black ~1."""
    nodes = [
        helper.make_node("Abs", ["images"], ["abs"]),
        helper.make_node("ReduceMean", ["abs"], ["maps"], axes=[1], keepdims=0),
        helper.make_node("ReduceMax", ["maps"], ["scores"], axes=[1, 2], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, None, None])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["batch", None, None]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    labels = {
        "task": "anomaly-detection",
        "image_size": image_size,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "input": "images",
        "outputs": ["scores", "maps"],
        "threshold": threshold,
        "threshold_source": None if threshold is None else "good_quantile",
        "tiling": tiling,
        "tile_overlap": 0.25,
        "sigma": sigma,
        "maps_blurred": not tiling,
        "map_scale": 1.0,
    }
    (folder / "labels.json").write_text(json.dumps(labels))
    return ModelFiles(folder.name, folder / "model.onnx", labels)


def write_tiny_classifier(folder: Path) -> ModelFiles:
    """folder/model.onnx + labels.json of the serving tests' tiny 3-class classifier."""
    onnx_path = write_classifier(folder / "model.onnx", seed=3)
    (folder / "labels.json").write_text(json.dumps(classifier_labels()))
    return ModelFiles(folder.name, onnx_path, classifier_labels())


def surface(size: tuple[int, int] = (48, 40), *, defect: bool = False, seed: int = 0) -> np.ndarray:
    """A mid-grey noisy RGB surface (H, W, 3) uint8; `defect` draws a white square."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(118, 138, size=(height, width, 3), dtype=np.uint8)
    if defect:
        side = max(4, min(width, height) // 3)
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        pixels[top : top + side, left : left + side] = 255
    return pixels


def save(path: Path, pixels: np.ndarray, mode: str = "RGB") -> Path:
    """Save `pixels` as `path` (format from the suffix), converted to `mode` ("L" greyscale,
    "I;16" 16-bit greyscale, "RGBA", "RGB")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if mode == "I;16":
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(grey)  # uint16: mode "I;16"
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return path


def image_folder(root: Path, count: int, *, every_defect: int = 4) -> dict[str, bool]:
    """`count` PNGs under `root` in two sub-folders, every `every_defect`-th with a defect.
    Returns {absolute path: has a defect}."""
    out = {}
    for i in range(count):
        defect = i % every_defect == 0
        path = root / ("a" if i % 2 else "b") / f"img-{i:04d}.png"
        out[str(save(path, surface(seed=i, defect=defect)))] = defect
    return out


def recording_context(
    workdir: Path, models: dict[str, ModelFiles], *, cancel_after: int | None = None
) -> LocalContext:
    """A LocalContext on 2 CPU slots that serves `models` (version id -> files) and, with
    `cancel_after` N, is cancelled from its Nth `cancelled()` call on."""
    return LocalContext(
        workdir,
        resources={"gpus": 0.0, "cpus": 2.0, "memory_bytes": 0},
        models={
            vid: {"onnx": f.onnx_path, "labels": f.onnx_path.with_name("labels.json")}
            for vid, f in models.items()
        },
        cancel_after=None if cancel_after is None else cancel_after - 1,
    )


def progress(ctx: LocalContext) -> list[dict[str, Any]]:
    """The data of every progress event, oldest first."""
    return [e["data"] for e in ctx.events_of("progress")]


def wait_for(check: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {check}"
        time.sleep(0.02)
    return value
