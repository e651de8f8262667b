"""Classification metrics checked by hand, calibration, and the latency probe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from modelfab.recipes.vision.evaluate import (
    classification_metrics,
    expected_calibration_error,
    loss_and_accuracy,
    measure_latency,
)


def one_hot_logits(pred: list[int], k: int, margin: float = 5.0) -> np.ndarray:
    logits = np.zeros((len(pred), k), dtype=np.float32)
    logits[np.arange(len(pred)), pred] = margin
    return logits


def test_metrics_by_hand() -> None:
    # true: a a a b b c ; pred: a a b b c c
    labels = np.array([0, 0, 0, 1, 1, 2])
    m = classification_metrics(one_hot_logits([0, 0, 1, 1, 2, 2], 3), labels, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert m["n"] == 6
    # a: p=1, r=2/3, f1=0.8 ; b: p=1/2, r=1/2, f1=1/2 ; c: p=1/2, r=1, f1=2/3
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.666667, "f1": 0.8, "support": 3}
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["recall"] == pytest.approx(1.0)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3, abs=1e-6)


def test_absent_classes_do_not_dilute_macro_f1() -> None:
    m = classification_metrics(one_hot_logits([0, 1], 3), np.array([0, 1]), ["a", "b", "c"])
    assert m["macro_f1"] == 1.0
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_ece_of_a_perfectly_calibrated_case_is_zero() -> None:
    # Every prediction has confidence 0.8 and 8 of 10 are right.
    logits = np.tile(np.log([[0.8, 0.2]]), (10, 1)).astype(np.float32)
    labels = np.array([0] * 8 + [1] * 2)
    m = classification_metrics(logits, labels, ["x", "y"])
    assert m["ece"] == pytest.approx(0.0, abs=1e-6)
    assert m["accuracy"] == pytest.approx(0.8)


def test_ece_of_an_overconfident_case() -> None:
    # confidence 0.9 in one bin, half right: 0.4; confidence 0.6, all right: 0.4 -> mean 0.4
    confidence = np.array([0.9, 0.9, 0.6, 0.6])
    correct = np.array([True, False, True, True])
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.4)
    assert expected_calibration_error(np.array([]), np.array([], dtype=bool)) == 0.0


def test_loss_and_accuracy() -> None:
    model = nn.Identity()
    x = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    y = torch.tensor([0, 1, 1])
    out = loss_and_accuracy(model, [(x, y)], torch.device("cpu"))
    assert out["val_accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    expected = (2 * math.log(1 + math.exp(-3)) + math.log(1 + math.exp(3))) / 3
    assert out["val_loss"] == pytest.approx(expected, abs=1e-5)


def test_measure_latency_reports_both_batch_sizes() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    result = measure_latency(model, 16, torch.device("cpu"), batch_sizes=(1, 4))
    assert result["device"] == "cpu" and result["image_size"] == 16
    for key in ("ms_per_image_b1", "images_per_s_b1", "ms_per_image_b4", "images_per_s_b4"):
        assert result[key] > 0
