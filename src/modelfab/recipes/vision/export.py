"""ONNX export of image models and its parity check against PyTorch.

Export settings (torch 2.14): the torch.export-based exporter (`dynamo=True`, which needs
onnxscript) at opset 18, batch axis dynamic, weights inside the one .onnx file
(`external_data=False`). Opset 18 because that exporter only implements >= 18: asking
for 17 makes it down-convert, which fails on Reduce* nodes and leaves 18 anyway. When
the new exporter fails on an architecture, the legacy TorchScript exporter
(`dynamo=False`, opset 17, deprecated) is tried before giving up.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from modelfab.errors import ModelfabError

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
OPSET = 18
LEGACY_OPSET = 17
EXPORT_BATCH = 2
"""The example batch traced; > 1 so the exporter does not specialise the batch axis to 1."""


def export_onnx(
    model: nn.Module,
    image_size: int,
    path: Path,
    *,
    outputs: Sequence[str] = (OUTPUT_NAME,),
    param: str = "base_model",
) -> None:
    """Write `model` (NCHW float32 "images" -> `outputs`, every one batch-first; dynamic
    batch) to `path` as ONNX.

    Exports on the CPU in eval mode and leaves `model` there (eval mode, contiguous
    format, as a model trained channels_last on CUDA is not). Blocks
    for seconds (tracing). Raises ModelfabError code "export_failed" when neither exporter
    manages the model (`param` names what the user should change).
    """
    model.cpu().eval().to(memory_format=torch.contiguous_format)
    example = torch.randn(EXPORT_BATCH, 3, image_size, image_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _export_dynamo(model, example, path, outputs)
        return
    except Exception as exc:  # exporter failures have no common type
        logger.warning("dynamo ONNX export failed (%s); trying the legacy exporter", exc)
        path.unlink(missing_ok=True)
    try:
        _export_legacy(model, example, path, outputs)
    except Exception as exc:
        raise ModelfabError(
            f"could not export the model to ONNX ({type(exc).__name__}: {exc}); "
            f"try another {param}",
            code="export_failed",
            param=param,
        ) from exc


def _export_dynamo(
    model: nn.Module, example: torch.Tensor, path: Path, outputs: Sequence[str]
) -> None:
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        opset_version=OPSET,
        input_names=[INPUT_NAME],
        output_names=list(outputs),
        dynamic_shapes=({0: batch},),
        external_data=False,
        verbose=False,
    )


def _export_legacy(
    model: nn.Module, example: torch.Tensor, path: Path, outputs: Sequence[str]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=LEGACY_OPSET,
            input_names=[INPUT_NAME],
            output_names=list(outputs),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *outputs)},
        )


def check_parity(
    model: nn.Module,
    onnx_path: Path,
    sample: torch.Tensor,
    atol: float = 1e-3,
    rtol: float = 1e-3,
) -> dict[str, Any]:
    """Compare ONNX Runtime (CPUExecutionProvider) with PyTorch (fp32, CPU) on `sample`.

    The allowed difference is `atol + rtol * max|logit|`, as in numpy.allclose: fp32 kernels
    differ by a relative error, so a fine-tuned model with logits of 10-20 must not fail
    where a fresh one with logits near 1 passes. Returns max_abs_diff, allowed, top1_agreement
    (share of rows whose arg-max agrees), atol, rtol, n, provider. A top-1 disagreement
    counts as a failure only where PyTorch's top two logits are further apart than the
    allowed difference twice over: closer than that, it is a tie the tolerance allows.

    Raises:
        ModelfabError: code "export_parity_failed" when max_abs_diff > allowed or a top-1
            prediction disagrees beyond such a tie.
    """
    model.cpu().eval()
    x = sample.detach().float().cpu().contiguous()
    with torch.inference_mode():
        expected = model(x).float().numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0], dtype=np.float32)
    diff = float(np.abs(got - expected).max()) if expected.size else 0.0
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    allowed = atol + rtol * scale
    agree = got.argmax(1) == expected.argmax(1)
    top2 = np.sort(expected, axis=1)[:, -2:] if expected.shape[1] > 1 else np.zeros((len(x), 2))
    real_disagreements = int((~agree & (top2[:, 1] - top2[:, 0] > 2 * allowed)).sum())
    result = {
        "max_abs_diff": diff,
        "allowed": allowed,
        "top1_agreement": float(agree.mean()) if len(agree) else 1.0,
        "atol": atol,
        "rtol": rtol,
        "n": len(x),
        "provider": "CPUExecutionProvider",
    }
    if diff > allowed or real_disagreements:
        raise ModelfabError(
            f"the ONNX export differs from the PyTorch model (max |diff| {diff:.2e}, allowed "
            f"{allowed:.2e} = {atol:.0e} + {rtol:.0e} x max|logit| {scale:.3g}; top-1 "
            f"agreement {result['top1_agreement']:.3f}); the model was not exported. Try "
            "another base_model and report this",
            code="export_parity_failed",
            param="base_model",
        )
    return result
