"""The PatchCore scoring path exported whole to ONNX: parity with the detector's own scoring
(resized and tiled), labels.json as the serving contract says, and a parity failure caught."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from modelfab.apps.inspection.samples import texture_surface
from modelfab.errors import ModelfabError
from modelfab.recipes.anomaly import export
from modelfab.recipes.anomaly.params import PatchCoreParams
from modelfab.recipes.anomaly.patchcore import PatchCore

TINY = PatchCoreParams(backbone="tiny-cnn", image_size=64, max_bank=300)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = random.Random(3)
    return [texture_surface(rng, 96, "gravel") for _ in range(10)]


@pytest.fixture(scope="module")
def detector(images: list[Image.Image]) -> PatchCore:
    return PatchCore.fit(images[:8], TINY)


@pytest.fixture(scope="module")
def exported(detector: PatchCore, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return export.export_onnx(detector, tmp_path_factory.mktemp("export"))


def test_onnx_scores_and_maps_match_the_detector(
    detector: PatchCore, exported: tuple[Path, Path], images: list[Image.Image]
) -> None:
    onnx_path, _ = exported
    sample = [*images[8:], images[0].convert("L"), images[1].crop((0, 0, 90, 60))]
    parity = export.check_parity(detector, onnx_path, sample)
    assert parity["n"] == 4
    assert parity["max_score_diff"] <= parity["allowed"]
    # Independently of check_parity: run the graph and compare with detector.score.
    expected = detector.score(sample)
    units = np.stack([t.numpy() for t in detector.prep.tensors(sample)])
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scores, maps = session.run(["scores", "maps"], {"images": units})
    np.testing.assert_allclose(scores, expected.scores, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(maps, np.stack(expected.maps), rtol=1e-3, atol=1e-3)
    assert maps.shape == (4, 64, 64)


def test_labels_describe_the_graph(detector: PatchCore, exported: tuple[Path, Path]) -> None:
    labels = json.loads(exported[1].read_text())
    assert detector.threshold is not None
    assert labels["task"] == "anomaly-detection"
    assert labels["image_size"] == 64 and labels["outputs"] == ["scores", "maps"]
    assert labels["threshold"] == pytest.approx(detector.threshold.value)
    assert labels["threshold_source"] == "good_quantile"
    assert labels["maps_blurred"] is True and labels["tiling"] is False
    assert labels["map_scale"] == pytest.approx(2 * detector.threshold.value)


def test_a_tiled_detector_exports_unblurred_tile_maps(
    images: list[Image.Image], tmp_path: Path
) -> None:
    tiled = PatchCore.fit(images[:4], PatchCoreParams(**{**TINY.to_dict(), "tiling": True}))
    onnx_path, labels_path = export.export_onnx(tiled, tmp_path)
    parity = export.check_parity(tiled, onnx_path, images[8:])
    assert parity["n"] == 2 * 4  # two 96-px images, 2 x 2 tiles of 64 px each
    labels = json.loads(labels_path.read_text())
    assert labels["tiling"] is True and labels["maps_blurred"] is False


def test_a_graph_of_another_detector_fails_parity(
    exported: tuple[Path, Path], images: list[Image.Image]
) -> None:
    other = PatchCore.fit(images[2:10], PatchCoreParams(**{**TINY.to_dict(), "seed": 5}))
    with pytest.raises(ModelfabError) as caught:
        export.check_parity(other, exported[0], images[:2])
    assert caught.value.code == "export_parity_failed"
