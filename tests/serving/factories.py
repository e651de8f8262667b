"""Tiny ONNX classifiers and their labels, built with onnx.helper (no torch, milliseconds)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from modelfab.errors import NotFound
from modelfab.serving.models import ModelFiles

CLASSES = ["cat", "dog", "fox"]
IMAGE_SIZE = 16
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
SECRET = "replica-secret-for-tests-0123456789abcdef"
"""What the platform would give a replica at start; `AUTH` presents it."""
AUTH = {"Authorization": f"Bearer {SECRET}"}


def write_classifier(
    path: Path, *, seed: int = 0, classes: int = len(CLASSES), channels: int = 4
) -> Path:
    """Write "images" (N, 3, S, S) -> Conv 3x3/2 -> Relu -> global mean -> Gemm -> "logits"
    (N, classes), with a dynamic batch axis, like an exported modelfab classifier."""
    rng = np.random.default_rng(seed)
    weights = {
        "conv_w": rng.normal(size=(channels, 3, 3, 3)).astype(np.float32),
        "conv_b": rng.normal(size=(channels,)).astype(np.float32),
        "fc_w": rng.normal(size=(channels, classes)).astype(np.float32),
        "fc_b": rng.normal(size=(classes,)).astype(np.float32),
    }
    nodes = [
        helper.make_node(
            "Conv", ["images", "conv_w", "conv_b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, None, None])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(v, name=k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def labels(classes: list[str] | None = None, image_size: int = IMAGE_SIZE) -> dict[str, object]:
    """labels.json as the classification recipe writes it."""
    return {
        "classes": list(classes or CLASSES),
        "image_size": image_size,
        "mean": MEAN,
        "std": STD,
        "input": "images",
        "output": "logits",
        "resize": int(image_size * 1.14),
        "interpolation": "bilinear",
    }


def model_files(root: Path, version_id: str, *, seed: int = 0) -> ModelFiles:
    """A model version's files under `root/version_id`."""
    onnx_path = write_classifier(root / version_id / "model.onnx", seed=seed)
    (root / version_id / "labels.json").write_text(json.dumps(labels()))
    return ModelFiles(version_id=version_id, onnx_path=onnx_path, labels=labels())


def image_bytes(size: tuple[int, int] = (40, 30), seed: int = 0, fmt: str = "PNG") -> bytes:
    """An encoded RGB image with pixels that depend on `seed`."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


class DirLoader:
    """A model loader that writes each requested version under `root` on first use.

    Versions named "missing*" raise NotFound and "boom*" a RuntimeError (an unexpected
    failure); `calls` lists every version asked for.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[str] = []

    def __call__(self, version_id: str) -> ModelFiles:
        self.calls.append(version_id)
        if version_id.startswith("missing"):
            raise NotFound(f"model version {version_id} does not exist", param="version_id")
        if version_id.startswith("boom"):
            raise RuntimeError("secret internal detail")
        if not (self.root / version_id / "model.onnx").exists():
            return model_files(self.root, version_id)
        onnx_path = self.root / version_id / "model.onnx"
        return ModelFiles(
            version_id, onnx_path, json.loads(onnx_path.with_name("labels.json").read_text())
        )
