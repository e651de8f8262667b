"""ONNX Runtime sessions as the ONNX kinds (classifier, detector) open them."""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

from modelfab.serving.protocol import MEMORY_FACTOR, LoadOptions, ModelFiles, invalid

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(use_cuda: bool) -> list[str]:
    """CUDA then CPU when `use_cuda` and ONNX Runtime has CUDA; otherwise CPU only."""
    if use_cuda and CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    return [CPU]


def estimate_bytes(onnx_path: Path) -> int:
    """The memory a loaded model is assumed to take (see MEMORY_FACTOR)."""
    return int(onnx_path.stat().st_size * MEMORY_FACTOR)


def open_session(files: ModelFiles, options: LoadOptions) -> ort.InferenceSession:
    """A session over the version's model.onnx (blocks: reads and optimises the graph).
    Raises ModelfabError "model_invalid" when it is missing or ONNX Runtime refuses it."""
    path = files.path("model.onnx")
    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", str(int(options.allow_spinning)))
    if options.intra_op_threads is not None:
        so.intra_op_num_threads = options.intra_op_threads
    try:
        return ort.InferenceSession(
            str(path), sess_options=so, providers=choose_providers(options.use_cuda)
        )
    except Exception as exc:  # ORT raises its own untyped errors for bad graphs
        raise invalid(files, f"ONNX Runtime cannot load it ({exc})") from exc
