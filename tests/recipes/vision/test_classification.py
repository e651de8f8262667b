"""`train_classifier` end to end on generated images with the tiny random-init network,
plus the rules of `resolve_auto`."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image, ImageDraw

from modelfab.errors import InvalidRequest
from modelfab.hub.catalog import get_entry
from modelfab.recipes.vision.classification import TrainOutput, resolve_auto, train_classifier
from tests.recipes.vision.test_training_loop import Crash, recording

COLOURS = {"blue": (40, 60, 200), "green": (40, 190, 60), "red": (210, 40, 40)}
TINY = {"base_model": "tiny-cnn", "image_size": 32, "batch_size": 8, "lr": 0.01, "augment": False}


def colour_shapes(root: Path, per_class: int = 40) -> Path:
    """Three classes told apart by colour: a jittered coloured background with a grey
    shape of random kind, position and size on it. Sizes and modes vary."""
    rng = random.Random(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            side = rng.choice([36, 40, 48, 64])
            colour = tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in rgb)
            img = Image.new("RGB", (side, side + rng.randint(0, 8)), colour)
            x, y, r = rng.randint(4, side - 16), rng.randint(4, side - 16), rng.randint(4, 10)
            shape = img.getpixel((0, 0)), (128, 128, 128)
            ImageDraw.Draw(img).ellipse((x, y, x + r, y + r), fill=shape[1])
            (img.convert("RGBA") if i % 5 == 0 else img).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_shapes(tmp_path_factory.mktemp("data") / "colours")


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainOutput:
    workdir = tmp_path_factory.mktemp("work")
    return train_classifier(
        dataset, {**TINY, "epochs": 3}, workdir=workdir, reporter=recording(workdir)
    )


def test_training_beats_chance_clearly(trained: TrainOutput) -> None:
    assert trained.classes == ["blue", "green", "red"]
    assert trained.metrics["accuracy"] >= 0.8
    assert trained.fit.epochs_run == 3 and trained.fit.resumed_from_epoch is None
    assert not trained.cancelled


def test_metrics_are_complete(trained: TrainOutput) -> None:
    m = trained.metrics
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "ece", "n"} <= set(m)
    assert set(m["per_class"]) == set(trained.classes)
    assert sum(map(sum, m["confusion_matrix"])) == m["n"] == m["split"]["val"]
    assert m["split"]["train"] + m["split"]["val"] == 120
    assert m["latency"]["ms_per_image_b1"] > 0 and m["latency"]["images_per_s_b32"] > 0
    assert m["onnx_parity"]["max_abs_diff"] <= m["onnx_parity"]["allowed"]
    assert m["fit"]["best_epoch"] >= 1 and len(m["fit"]["history"]) == 3
    json.dumps(m)  # registered as JSON


def test_outputs_are_written_and_consistent(trained: TrainOutput, dataset: Path) -> None:
    assert trained.weights_path.parent == trained.onnx_path.parent == trained.labels_path.parent
    labels = json.loads(trained.labels_path.read_text())
    assert labels["classes"] == trained.classes and labels["image_size"] == 32
    assert labels["input"] == "images" and labels["output"] == "logits"
    assert labels["mean"] == list(get_entry("tiny-cnn").mean)
    saved = torch.load(trained.weights_path, map_location="cpu", weights_only=True)
    assert saved["arch"] == "test_efficientnet" and saved["num_classes"] == 3
    assert saved["classes"] == trained.classes and saved["image_size"] == 32
    # The ONNX model alone classifies a fresh red image as red.
    img = Image.new("RGB", (40, 40), COLOURS["red"]).resize((36, 36)).crop((2, 2, 34, 34))
    x = (np.asarray(img, dtype=np.float32) / 255 - labels["mean"]) / labels["std"]
    session = ort.InferenceSession(str(trained.onnx_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": x.transpose(2, 0, 1)[None].astype(np.float32)})[0]
    assert trained.classes[int(logits.argmax())] == "red"


def test_a_retried_attempt_resumes_from_the_checkpoint(dataset: Path, tmp_path: Path) -> None:
    params = {**TINY, "epochs": 3, "patience": 5}
    with pytest.raises(Crash):
        train_classifier(
            dataset, params, workdir=tmp_path, reporter=recording(tmp_path, crash_after_epoch=1)
        )
    assert (tmp_path / "checkpoint.pt").is_file() and not (tmp_path / "out").exists()
    reporter = recording(tmp_path)
    out = train_classifier(dataset, params, workdir=tmp_path, reporter=reporter)
    steps_per_epoch = out.metrics["split"]["train"] // 8
    assert out.fit.resumed_from_epoch == 1 and out.fit.epochs_done == 3
    assert out.fit.steps_run == 2 * steps_per_epoch < 3 * steps_per_epoch
    assert any(e["message"] == "Resumed from checkpoint at epoch 1" for e in reporter.events)
    assert out.onnx_path.is_file()


def test_cancel_returns_without_outputs(dataset: Path, tmp_path: Path) -> None:
    reporter = recording(tmp_path, cancel_after_calls=2)
    out = train_classifier(dataset, {**TINY, "epochs": 2}, workdir=tmp_path, reporter=reporter)
    assert out.cancelled and out.fit.cancelled and out.fit.steps_run == 2
    assert not out.weights_path.exists() and "fit" in out.metrics


def test_single_image_classes_leave_nothing_to_validate(tmp_path: Path) -> None:
    for name, rgb in COLOURS.items():
        (tmp_path / "d" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), rgb).save(tmp_path / "d" / name / "only.png")
    with pytest.raises(InvalidRequest) as err:
        train_classifier(tmp_path / "d", TINY, workdir=tmp_path / "w", reporter=recording(tmp_path))
    assert err.value.param == "dataset"


# --------------------------------------------------------------------------- resolve_auto


def test_auto_on_gpu_uses_the_models_input_size_and_mixed_precision() -> None:
    entry = get_entry("efficientnet-lite0")
    cfg = resolve_auto({}, num_images=1000, median_side=500, entry=entry, cuda=True)
    assert (cfg.image_size, cfg.batch_size, cfg.epochs) == (224, 64, 10)
    assert cfg.lr == pytest.approx(1e-3)
    assert cfg.device == "cuda" and cfg.amp and cfg.channels_last
    assert cfg.base_model == "efficientnet-lite0" and cfg.patience == 3 and cfg.augment
    assert not resolve_auto(
        {"amp": False}, num_images=10, median_side=9, entry=entry, cuda=True
    ).amp


def test_auto_on_cpu_shrinks_images_and_batches() -> None:
    entry = get_entry("efficientnet-lite0")
    cfg = resolve_auto({"epochs": "auto"}, num_images=200, median_side=100, entry=entry, cuda=False)
    assert (cfg.image_size, cfg.batch_size, cfg.epochs) == (96, 32, 15)
    assert cfg.lr == pytest.approx(0.5e-3)
    assert cfg.device == "cpu" and not cfg.amp and not cfg.channels_last
    big = resolve_auto({}, num_images=9000, median_side=1000, entry=entry, cuda=False)
    assert (big.image_size, big.epochs) == (160, 6)
    small = resolve_auto({}, num_images=12, median_side=20, entry=entry, cuda=False, num_train=9)
    assert (small.image_size, small.batch_size) == (64, 9)
    tiny = replace(entry, input_size=64, source="scratch")
    assert resolve_auto({}, num_images=12, median_side=500, entry=tiny, cuda=False).image_size == 64


def test_explicit_values_win_and_bad_ones_name_the_param() -> None:
    entry = get_entry("tiny-cnn")
    raw = {"epochs": 2, "batch_size": 4, "lr": 0.1, "image_size": 48, "num_workers": 1}
    cfg = resolve_auto(raw, num_images=50, median_side=40, entry=entry, cuda=False)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.image_size, cfg.num_workers) == (
        2,
        4,
        0.1,
        48,
        1,
    )
    with pytest.raises(InvalidRequest) as err:
        resolve_auto({"batch_size": 0}, num_images=50, median_side=40, entry=entry, cuda=False)
    assert err.value.param == "params.batch_size"
