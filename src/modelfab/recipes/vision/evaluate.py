"""Evaluation of image models: predictions, classification metrics, calibration, latency.

The metric functions are pure numpy over logits and labels, so any recipe can reuse them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ECE_BINS = 15
LATENCY_WARMUP_RUNS = 3
LATENCY_MIN_RUNS = 3
LATENCY_MAX_RUNS = 50
LATENCY_BUDGET_S = 0.5
"""Timed runs per batch size go on until both LATENCY_MIN_RUNS and this budget are reached
(or LATENCY_MAX_RUNS)."""


def predict(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(float32 logits of shape (n, classes), int64 labels of shape (n,)) over `loader`.

    Runs under inference mode; the caller sets `model.eval()` (and autocast, if wanted).
    """
    logits: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    with torch.inference_mode():
        for images, targets in loader:
            out = model(images.to(device, non_blocking=True))
            logits.append(out.float().cpu().numpy())
            labels.append(np.asarray(targets, dtype=np.int64))
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(logits), np.concatenate(labels)


def loss_and_accuracy(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> dict[str, float]:
    """{"val_loss": mean cross-entropy, "val_accuracy": top-1} over `loader`: the `eval_fn`
    of classification for `modelfab.recipes.training.loop.fit`. Needs a non-empty loader."""
    logits, labels = predict(model, loader, device)
    if len(labels) == 0:
        raise ValueError("the validation loader is empty")
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    accuracy = float((logits.argmax(1) == labels).mean())
    return {"val_loss": round(loss, 6), "val_accuracy": round(accuracy, 6)}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    out: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return out


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Sum over `bins` equal-width confidence bins of |accuracy - mean confidence| weighted
    by the bin's share of samples. Bins are (i/bins, (i+1)/bins]; 0 for no samples."""
    n = len(confidence)
    if n == 0:
        return 0.0
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            ece += mask.sum() / n * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)
    return out


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Metrics of `logits` (n, k) against integer `labels` (n,) for the k `classes`.

    Returns accuracy, macro_f1 (mean F1 over classes that occur in labels or predictions),
    per_class {name: precision, recall, f1, support}, confusion_matrix (k lists; row =
    true class, column = predicted), ece (ECE_BINS bins of top-1 confidence) and n.
    A class never predicted has precision 0; one absent from labels has recall 0.
    """
    k = len(classes)
    labels = np.asarray(labels, dtype=np.int64)
    pred = logits.argmax(axis=1) if len(labels) else np.zeros(0, np.int64)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision, recall = _safe_div(tp, predicted), _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    present = (support > 0) | (predicted > 0)
    confidence = softmax(logits).max(axis=1) if len(labels) else np.zeros(0)
    return {
        "accuracy": round(float(tp.sum() / max(1, len(labels))), 6),
        "macro_f1": round(float(f1[present].mean()) if present.any() else 0.0, 6),
        "per_class": {
            name: {
                "precision": round(float(precision[i]), 6),
                "recall": round(float(recall[i]), 6),
                "f1": round(float(f1[i]), 6),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
        "ece": round(expected_calibration_error(confidence, pred == labels), 6),
        "n": len(labels),
    }


def _time_batch(model: nn.Module, batch: torch.Tensor, device: torch.device) -> float:
    """Median seconds of one forward pass of `batch`, after warmup."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(LATENCY_WARMUP_RUNS):
        model(batch)
    sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < LATENCY_MAX_RUNS and (
        len(times) < LATENCY_MIN_RUNS or time.perf_counter() - started < LATENCY_BUDGET_S
    ):
        t0 = time.perf_counter()
        model(batch)
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure_latency(
    model: nn.Module,
    image_size: int,
    device: torch.device,
    batch_sizes: Sequence[int] = (1, 32),
) -> dict[str, Any]:
    """Forward-pass speed of `model` (fp32, eval mode, inference mode) on random input.

    Returns {"device": str, "image_size": int} plus, per batch size b,
    "ms_per_image_b{b}" and "images_per_s_b{b}" (medians of timed runs). Blocks for about
    LATENCY_BUDGET_S per batch size. Leaves the model in eval mode.
    """
    model.eval()
    result: dict[str, Any] = {"device": device.type, "image_size": image_size}
    with torch.inference_mode():
        for b in batch_sizes:
            batch = torch.randn(b, 3, image_size, image_size, device=device)
            seconds = _time_batch(model, batch, device)
            result[f"ms_per_image_b{b}"] = round(seconds * 1000 / b, 4)
            result[f"images_per_s_b{b}"] = round(b / seconds, 2)
    return result
