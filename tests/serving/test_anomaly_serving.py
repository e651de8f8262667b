"""Anomaly detectors on a replica: the numpy map helpers against the torch ones, a real
PatchCore (tiny-cnn backbone, 64 px) exported to ONNX and served through the replica app
next to a classifier.

Tolerance: the replica must give the detector's own `PatchCore.score` results. The ONNX
graph computes nearest distances as sqrt(|x|^2 - 2 x.b + |b|^2) in float32 where torch
uses cdist, so scores and maps may differ by float32 cancellation, ~1e-7 x |x|^2 / score;
we allow 1e-3 x the largest score (the exporter's parity bound). Measured here: at most
~1e-6 on scores of ~0.8-1.6, for resized and tiled detectors alike.
"""

from __future__ import annotations

import base64
import io
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.testclient import TestClient

from modelfab.apps.inspection.samples import draw_defect_with_mask, texture_surface
from modelfab.client import Client
from modelfab.errors import InvalidRequest, ModelfabError
from modelfab.recipes.anomaly import maps as torch_maps
from modelfab.recipes.anomaly.export import export_onnx
from modelfab.recipes.anomaly.params import PatchCoreParams
from modelfab.recipes.anomaly.patchcore import PatchCore
from modelfab.serving.anomaly import (
    AnomalyModel,
    Units,
    encode_heatmap,
    gaussian_blur,
    stitch,
    tile_offsets,
    tile_starts,
)
from modelfab.serving.inputs import decode_image
from modelfab.serving.models import LoadedModel, ModelCache, ModelFiles, load_model
from modelfab.serving.replica_app import create_replica_app
from tests.serving.factories import AUTH, CLASSES, SECRET, image_bytes, model_files

SIZE = 64

# --------------------------------------------------------------------------- numpy maps


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 48),
    width=st.integers(1, 48),
    sigma=st.sampled_from([0.0, 0.4, 1.0, 2.5, 4.0, 7.0]),
    seed=st.integers(0, 2**16),
)
def test_gaussian_blur_equals_the_torch_one(
    height: int, width: int, sigma: float, seed: int
) -> None:
    amap = np.random.default_rng(seed).uniform(0, 10, size=(height, width)).astype(np.float32)
    expected = torch_maps.gaussian_blur(torch.from_numpy(amap)[None], sigma)[0].numpy()
    got = gaussian_blur(amap, sigma)
    assert got.dtype == np.float32 and got.shape == amap.shape
    assert np.abs(got - expected).max() <= 1e-5


@settings(max_examples=60, deadline=None)
@given(
    tile=st.integers(1, 24),
    extra=st.tuples(st.integers(0, 40), st.integers(0, 40)),
    overlap=st.floats(0, 0.9),
    seed=st.integers(0, 2**16),
)
def test_tiles_and_stitch_equal_the_torch_ones(
    tile: int, extra: tuple[int, int], overlap: float, seed: int
) -> None:
    height, width = tile + extra[0], tile + extra[1]
    offsets = tile_offsets(height, width, tile, overlap)
    image = torch.zeros(3, height, width)
    assert torch_maps.split_tiles(image, tile, overlap)[1] == offsets
    assert {y for y, _ in offsets} == set(tile_starts(height, tile, overlap))
    assert (
        max(y for y, _ in offsets) == height - tile and max(x for _, x in offsets) == width - tile
    )
    maps = np.random.default_rng(seed).uniform(0, 5, (len(offsets), tile, tile)).astype(np.float32)
    expected = torch_maps.stitch(torch.from_numpy(maps), offsets, (height, width)).numpy()
    np.testing.assert_allclose(stitch(maps, offsets, (height, width)), expected, atol=1e-6)


def test_one_tile_starts_and_its_edges() -> None:
    assert torch_maps.tile_starts is tile_starts  # one implementation, not a copy
    assert tile_starts(300, 128, 0.25) == [0, 96, 172]
    assert tile_starts(64, 64, 0.5) == [0]
    with pytest.raises(ValueError, match="shorter than"):
        tile_starts(63, 64, 0.25)
    with pytest.raises(ValueError, match="2 tile maps for 1 offsets"):
        stitch(np.zeros((2, 4, 4), np.float32), [(0, 0)], (4, 4))


def test_heatmap_png_is_the_scaled_map() -> None:
    amap = np.array([[0.0, 1.0, 2.0], [4.0, -1.0, 0.5]], dtype=np.float32)
    heat = encode_heatmap(amap, 2.0)
    assert {k: heat[k] for k in ("format", "encoding", "width", "height", "scale")} == {
        "format": "png",
        "encoding": "base64",
        "width": 3,
        "height": 2,
        "scale": 2.0,
    }
    png = png_of(heat)
    assert png.mode == "L"
    assert np.asarray(png).tolist() == [[0, 128, 255], [255, 0, 64]]
    with pytest.raises(ValueError):
        encode_heatmap(amap, 0.0)


# --------------------------------------------------------------------------- real detectors


def fit(tiling: bool) -> PatchCore:
    rng = random.Random(1)
    good = [texture_surface(rng, SIZE, "gravel") for _ in range(8)]
    params = PatchCoreParams(backbone="tiny-cnn", image_size=SIZE, max_bank=200, tiling=tiling)
    return PatchCore.fit(good, params)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[PatchCore, ModelFiles]]:
    """A resized and a tiled detector, each fitted and exported once (seconds each)."""
    out = {}
    for name, tiling in (("det", False), ("tiled", True)):
        detector = fit(tiling)
        onnx_path, labels_path = export_onnx(detector, tmp_path_factory.mktemp(name))
        out[name] = detector, ModelFiles(name, onnx_path, json.loads(labels_path.read_text()))
    return out


def sample_images() -> list[Image.Image]:
    """Colour, greyscale, 16-bit, non-square (both ways), a drawn defect, and one image
    smaller than the tile."""
    rng = random.Random(7)
    grey16 = np.asarray(texture_surface(rng, 72, "gravel").convert("L")).astype(np.uint16) * 257
    defect, _ = draw_defect_with_mask(texture_surface(rng, 96, "gravel"), rng, "spot")
    images = [
        texture_surface(rng, 80, "gravel"),
        texture_surface(rng, 70, "gravel").convert("L"),
        Image.fromarray(grey16),
        texture_surface(rng, 150, "gravel").resize((150, 100)),
        defect.resize((90, 130)),
        texture_surface(rng, 50, "gravel").resize((50, 40)),
    ]
    assert [i.mode for i in images[:3]] == ["RGB", "L", "I;16"]
    return images


@pytest.mark.parametrize("name", ["det", "tiled"])
def test_the_served_detector_scores_like_patchcore(
    exported: dict[str, tuple[PatchCore, ModelFiles]], name: str
) -> None:
    detector, files = exported[name]
    model = load_model(files, max_batch_size=3)  # tiled images span several chunks
    assert isinstance(model, AnomalyModel) and model.task == "anomaly-detection"
    images = sample_images()
    expected = detector.score(images)
    items = [model.prepare(image) for image in images]
    raws = model.infer(items)
    tolerance = 1e-3 * float(expected.scores.max())
    for image, raw, score, emap in zip(images, raws, expected.scores, expected.maps, strict=True):
        got_score, got_map = model.score_map(raw)
        assert abs(got_score - score) <= tolerance, (image.size, got_score, score)
        assert got_map.shape == emap.shape and got_map.dtype == np.float32
        assert np.abs(got_map - emap).max() <= tolerance
    if name == "tiled":
        assert items[3].shape[0] > 1 and items[3].scored_size == (100, 150)
        assert model.score_map(raws[3])[1].shape == (100, 150)
        assert model.score_map(raws[5])[1].shape == (64, 80)  # short side raised to 64
    else:
        assert all(item.shape == (1, 3, SIZE, SIZE) for item in items)


def test_infer_chunks_and_plain_arrays(exported: dict[str, tuple[PatchCore, ModelFiles]]) -> None:
    _, files = exported["tiled"]
    one, chunked = load_model(files), load_model(files, max_batch_size=2)
    assert isinstance(one, AnomalyModel) and isinstance(chunked, AnomalyModel)
    units = one.prepare(sample_images()[3])
    assert isinstance(units, Units) and len(units) == 6
    a, b = one.infer([units])[0], chunked.infer([units])[0]
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    plain = np.asarray(units[:1])  # a plain one-unit array is an untiled S x S image
    assert type(plain) is np.ndarray and one.infer([plain])[0].size == (SIZE, SIZE)
    with pytest.raises(ValueError, match="one unit"):
        one.infer([np.asarray(units)])


def test_verdicts_options_and_bad_options(
    exported: dict[str, tuple[PatchCore, ModelFiles]],
) -> None:
    detector, files = exported["det"]
    model = load_model(files)
    assert isinstance(model, AnomalyModel)
    assert detector.threshold is not None and model.threshold == detector.threshold.value
    raw = model.infer([model.prepare(sample_images()[0])])[0]
    score = model.score(raw)
    assert model.result(raw, {"threshold": str(score)})["is_anomaly"] is True  # >= is anomaly
    low = model.result(raw, {"threshold": str(score * 1.01), "heatmap": "false"})
    assert (low["is_anomaly"], low["label"], "heatmap" in low) == (False, "good", False)
    for option, value in [("threshold", "abc"), ("threshold", "nan"), ("heatmap", "maybe")]:
        with pytest.raises(InvalidRequest) as err:
            model.result(raw, {option: value})
        assert err.value.param == option and err.value.status == 422


def test_unservable_labels_are_model_invalid(
    exported: dict[str, tuple[PatchCore, ModelFiles]],
) -> None:
    _, files = exported["det"]
    no_size = {k: v for k, v in files.labels.items() if k != "image_size"}
    for broken in [{**files.labels, "map_scale": 0}, {**files.labels, "task": "segment"}, no_size]:
        with pytest.raises(ModelfabError) as err:
            load_model(ModelFiles("bad", files.onnx_path, broken))
        assert (err.value.code, err.value.param) == ("model_invalid", "version_id")


# --------------------------------------------------------------------------- replica app


@pytest.fixture
def client(
    exported: dict[str, tuple[PatchCore, ModelFiles]], tmp_path: Path
) -> Iterator[TestClient]:
    """A replica app over the two detectors, an uncalibrated copy of "det", and a
    classifier "clf"."""
    files = {name: pair[1] for name, pair in exported.items()}
    det = files["det"]
    files["uncalibrated"] = ModelFiles("uncalibrated", det.onnx_path, {**det.labels})
    files["uncalibrated"].labels["threshold"] = None
    files["clf"] = model_files(tmp_path, "clf")
    cache = ModelCache(files.__getitem__, budget_bytes=10**9, intra_op_threads=1)
    app = create_replica_app(cache, secret=SECRET, workers=2)
    with TestClient(app, raise_server_exceptions=False, headers=AUTH) as c:
        yield c


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def png_of(heatmap: dict[str, Any]) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(heatmap["data"])), formats=["PNG"])
    image.load()
    return image


def post(client: TestClient, version: str, images: list[bytes], query: str = "") -> Any:
    files = [("file", (f"{i}.png", data)) for i, data in enumerate(images)]
    return client.post(f"/models/{version}/predict{query}", files=files)


def test_a_detector_answers_score_verdict_and_heatmap(
    client: TestClient, exported: dict[str, tuple[PatchCore, ModelFiles]]
) -> None:
    _, files = exported["det"]
    model = load_model(files)
    assert isinstance(model, AnomalyModel) and model.threshold is not None
    images = sample_images()
    bodies = [png_bytes(images[0]), png_bytes(images[2], "TIFF"), png_bytes(images[3], "JPEG")]
    assert client.post("/models/det/load").json()["loaded"] is True
    r = post(client, "det", bodies, "?top_k=7")  # top_k is ignored by detectors
    assert r.status_code == 200 and r.headers["x-modelfab-items"] == "3"
    body = r.json()
    assert list(body) == ["object", "model_version", "task", "threshold", "data", "usage"]
    assert (body["model_version"], body["task"]) == ("det", "anomaly-detection")
    assert body["threshold"] == model.threshold and body["usage"] == {"items": 3}
    for i, (item, data) in enumerate(zip(body["data"], bodies, strict=True)):
        score, amap = model.score_map(model.infer([model.prepare(decode_image("x", data))])[0])
        assert (item["index"], item["name"]) == (i, f"{i}.png")
        assert item["score"] == pytest.approx(score, abs=1e-6)
        assert item["threshold"] == model.threshold
        assert item["is_anomaly"] is (score >= model.threshold)
        assert item["label"] == ("anomaly" if item["is_anomaly"] else "good")
        heat = item["heatmap"]
        assert (heat["width"], heat["height"], heat["scale"]) == (SIZE, SIZE, model.map_scale)
        png = png_of(heat)
        assert (png.mode, png.size) == ("L", (SIZE, SIZE))
        expected = np.rint(np.clip(amap / model.map_scale, 0, 1) * 255)
        assert np.abs(np.asarray(png, dtype=float) - expected).max() <= 1


def test_query_options_override_and_are_checked(client: TestClient) -> None:
    data = [png_bytes(image) for image in sample_images()[:2]]
    everything = post(client, "det", data, "?threshold=0&heatmap=false").json()
    assert everything["threshold"] == 0.0
    for item in everything["data"]:
        assert (item["threshold"], item["is_anomaly"], item["label"]) == (0.0, True, "anomaly")
        assert "heatmap" not in item
    nothing = post(client, "det", data, "?threshold=1e9").json()
    assert [item["label"] for item in nothing["data"]] == ["good", "good"]
    assert all("heatmap" in item for item in nothing["data"])
    for query, param in [("?threshold=abc", "threshold"), ("?heatmap=perhaps", "heatmap")]:
        r = post(client, "det", data, query)
        err = r.json()["error"]
        assert (r.status_code, err["code"], err["param"]) == (422, "invalid_request", param)
        assert param in err["message"]


def test_an_uncalibrated_detector_gives_no_verdict(client: TestClient) -> None:
    body = post(client, "uncalibrated", [png_bytes(sample_images()[0])]).json()
    assert body["threshold"] is None
    [item] = body["data"]
    assert (item["threshold"], item["is_anomaly"], item["label"]) == (None, None, None)
    assert item["score"] > 0
    with_threshold = post(client, "uncalibrated", [png_bytes(sample_images()[0])], "?threshold=0")
    assert with_threshold.json()["data"][0]["label"] == "anomaly"


def test_a_tiled_detector_answers_at_full_resolution(client: TestClient) -> None:
    images = sample_images()
    r = post(client, "tiled", [png_bytes(images[3]), png_bytes(images[5])])
    assert r.status_code == 200
    big, small = (item["heatmap"] for item in r.json()["data"])
    assert (big["width"], big["height"]) == (150, 100) and png_of(big).size == (150, 100)
    assert (small["width"], small["height"]) == (80, 64)


def test_a_classifier_still_answers_top_k_beside_detectors(client: TestClient) -> None:
    r = post(client, "clf", [image_bytes(seed=1)], "?top_k=2&heatmap=false")
    assert r.status_code == 200
    body = r.json()
    assert (body["task"], "threshold" in body) == ("image-classification", False)
    [item] = body["data"]
    assert len(item["top_k"]) == 2 and item["top_k"][0]["label"] == item["label"]
    assert item["label"] in CLASSES and set(item) == {"index", "name", "label", "score", "top_k"}
    bad = post(client, "clf", [image_bytes()], "?top_k=4").json()["error"]
    assert bad["param"] == "top_k" and "at most 3" in bad["message"]
    # A detector's option is refused by name rather than ignored (issue 10, defect 9).
    refused = post(client, "clf", [image_bytes()], "?top_k=2&threshold=abc")
    assert refused.status_code == 422
    assert refused.json()["error"]["param"] == "threshold"


def test_classifier_infer_matches_predict(tmp_path: Path) -> None:
    files = model_files(tmp_path, "v1")
    model = load_model(files, max_batch_size=2)
    assert isinstance(model, LoadedModel) and model.task == "image-classification"
    images = [decode_image("x", image_bytes(seed=i)) for i in range(5)]
    items = [model.prepare(image) for image in images]
    expected = model.predict(np.concatenate(items))
    np.testing.assert_allclose(np.stack(model.infer(items)), expected, atol=1e-6)
    with pytest.raises(ValueError):
        model.infer([np.concatenate(items[:2])])


def test_replicas_and_models_do_not_import_torch() -> None:
    code = (
        "import sys, modelfab.serving.replica_app, modelfab.serving.models, "
        "modelfab.serving.anomaly; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_client_sends_detector_options_only_when_set() -> None:
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        body = {"model_version": "mv_1", "task": "anomaly-detection", "data": []}
        return httpx.Response(200, json={**body, "usage": {"items": 0}})

    with Client("http://modelfab.test", "key", transport=httpx.MockTransport(handler)) as c:
        c.predict("parts", [("a.png", image_bytes())])
        c.predict("parts", [("a.png", image_bytes())], threshold=1.25, heatmap=False)
        c.predict("parts", [("a.png", image_bytes())], top_k=2, heatmap=True)
    assert seen == [
        {"top_k": "1"},
        {"top_k": "1", "threshold": "1.25", "heatmap": "false"},
        {"top_k": "2", "heatmap": "true"},
    ]
