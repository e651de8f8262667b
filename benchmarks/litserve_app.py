"""The peer server of the serving benchmark (benchmarks/serving.py): LitServe running the
benchmark's ONNX model, with its own dynamic batching, and the preprocessing that (a) shares.

    .venv/bin/python benchmarks/litserve_app.py MODEL_DIR --port 8000 --max-batch-size 8

MODEL_DIR holds the registered model's model.onnx and labels.json. One API server process
and one inference worker serve POST /predict (multipart part "file", one image) on loopback;
the answer is {"data": [{"label", "score"}, ...]}, the top classes with softmax scores."""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

try:
    import litserve as ls
except ImportError:
    sys.exit("litserve is missing: .venv/bin/pip install -e '.[dev,train,bench]'")

LITSERVE_VERSION: str = ls.__version__


def preprocess(png: bytes, spec: dict[str, Any]) -> np.ndarray:
    """PNG bytes -> float32 (3, size, size), as the recipe's eval transform: RGB, short side
    resized to spec["resize"] (bilinear), centre crop spec["image_size"], mean/std."""
    with Image.open(io.BytesIO(png)) as img:
        rgb = img.convert("RGB")
    resize, size = int(spec["resize"]), int(spec["image_size"])
    w, h = rgb.size  # torchvision's rule: the short side becomes `resize`, the long truncated
    w, h = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    rgb = rgb.resize((w, h), Image.Resampling.BILINEAR)
    left, top = round((w - size) / 2), round((h - size) / 2)  # torchvision's CenterCrop
    array = np.asarray(rgb.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
    array = (array - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def top_labels(logits: np.ndarray, classes: Sequence[str], k: int = 5) -> list[dict[str, Any]]:
    """Softmax of one row of logits, the top `k` as [{"label", "score"}], best first."""
    exp = np.exp(logits - logits.max())
    probs = exp / exp.sum()
    order = np.argsort(-probs)[:k]
    return [{"label": classes[i], "score": float(probs[i])} for i in order]


def new_session(onnx: Path) -> ort.InferenceSession:
    """ORT on the CPU with its default threads (intra-op: one per core)."""
    return ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])


class OnnxClassifierAPI(ls.LitAPI):
    """The model behind LitServe: decode + preprocess each request, ORT on the batch."""

    def __init__(self, model_dir: Path, max_batch_size: int, max_wait_ms: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=max_wait_ms / 1e3)
        self.model_dir = model_dir

    def setup(self, device: str) -> None:
        self.spec = json.loads((self.model_dir / "labels.json").read_text())
        self.session = new_session(self.model_dir / "model.onnx")
        self.input = self.session.get_inputs()[0].name

    # LitServe reads the annotations of decode_request and encode_response: none means a
    # starlette request (the form parsed for it) in and no FastAPI response model out.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return preprocess(request["file"].file.read(), self.spec)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        # With max_batch_size 1, LitServe skips batch/unbatch: x is one image.
        logits: np.ndarray = self.session.run(None, {self.input: x if x.ndim == 4 else x[None]})[0]
        return logits if x.ndim == 4 else logits[0]

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray):  # type: ignore[no-untyped-def]
        return {"data": top_labels(output, self.spec["classes"])}


def serve(model_dir: Path, port: int, max_batch_size: int, max_wait_ms: float) -> None:
    """The LitServe server process: one inference worker, one API server; blocks."""
    api = OnnxClassifierAPI(model_dir, max_batch_size, max_wait_ms)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1)
    server.run(
        host="127.0.0.1",
        port=port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model_dir", type=Path, help="folder with model.onnx and labels.json")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="LitServe's batch_timeout")
    args = p.parse_args(argv)
    serve(args.model_dir, args.port, args.max_batch_size, args.max_wait_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
