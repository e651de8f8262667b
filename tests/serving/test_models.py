from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from modelfab.errors import ModelfabError, NotFound
from modelfab.recipes.vision.data import build_transform, to_rgb
from modelfab.serving.models import (
    CPU,
    CUDA,
    LoadedModel,
    ModelCache,
    ModelFiles,
    ServedModel,
    choose_providers,
    estimate_bytes,
    softmax,
)
from tests.factories import write_image
from tests.serving.factories import IMAGE_SIZE, MEAN, STD, labels, model_files


@pytest.fixture
def files(tmp_path: Path) -> ModelFiles:
    return model_files(tmp_path, "v1")


class CountingLoader:
    """A loader over versions written under `root`, counting calls; may be slow or fail."""

    def __init__(self, root: Path, delay_s: float = 0.0) -> None:
        self.root = root
        self.delay_s = delay_s
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, version_id: str) -> ModelFiles:
        with self.lock:
            self.calls.append(version_id)
        time.sleep(self.delay_s)
        if version_id.startswith("missing"):
            raise NotFound(f"model version {version_id} does not exist", param="version_id")
        return model_files(self.root, version_id, seed=len(version_id))


# --- LoadedModel -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [(40, 30), (30, 40), (17, 17), (12, 9), (255, 97)])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_preprocess_matches_the_training_eval_transform(
    files: ModelFiles, tmp_path: Path, size: tuple[int, int], mode: str
) -> None:
    """torchvision runs Pillow's own bilinear resize on a PIL image, so the two agree up to
    float rounding (well under the 1e-2 a tensor-based antialiased resize would need)."""
    path = write_image(tmp_path / "x.png", size=size, mode=mode, seed=3)
    with Image.open(path) as img:
        rgb = to_rgb(img)
    expected = build_transform(IMAGE_SIZE, MEAN, STD, train=False, augment=False)(rgb).numpy()
    got = LoadedModel(files).preprocess(rgb)
    assert got.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-5


def test_predict_is_the_softmax_of_the_onnx_logits(files: ModelFiles) -> None:
    model = LoadedModel(files)
    batch = np.random.default_rng(0).normal(size=(5, 3, IMAGE_SIZE, IMAGE_SIZE))
    batch = batch.astype(np.float32)
    session = ort.InferenceSession(str(files.onnx_path), providers=[CPU])
    logits = session.run(["logits"], {"images": batch})[0]
    probs = model.predict(batch)
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs, softmax(logits), rtol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    assert model.providers == [CPU]


def test_softmax_is_stable_for_large_logits() -> None:
    probs = softmax(np.array([[1000.0, 1000.0, -1000.0]], dtype=np.float32))
    np.testing.assert_allclose(probs, [[0.5, 0.5, 0.0]])


def test_cuda_is_chosen_only_when_asked_for_and_available() -> None:
    assert choose_providers(False) == [CPU]
    has_cuda = CUDA in ort.get_available_providers()
    assert choose_providers(True) == ([CUDA, CPU] if has_cuda else [CPU])


def test_thread_options_are_passed_to_the_session(files: ModelFiles) -> None:
    options = LoadedModel(files, intra_op_threads=1).session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    options = LoadedModel(files, allow_spinning=True).session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"


@pytest.mark.parametrize(
    ("broken", "why"),
    [
        ({"image_size": 16}, "labels.json is incomplete"),
        ({**labels(), "resize": 8}, "resize 8 < image_size 16"),
    ],
)
def test_unusable_labels_are_model_invalid(files: ModelFiles, broken: dict, why: str) -> None:
    with pytest.raises(ModelfabError, match=why) as err:
        LoadedModel(ModelFiles("v1", files.onnx_path, broken))
    assert err.value.code == "model_invalid"


def test_an_unreadable_onnx_file_is_model_invalid(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ModelfabError, match="ONNX Runtime cannot load it") as err:
        LoadedModel(ModelFiles("v1", bad, labels()))
    assert err.value.code == "model_invalid"


# --- ModelCache -------------------------------------------------------------------------


def one_model_bytes(tmp_path: Path) -> int:
    return estimate_bytes(model_files(tmp_path / "probe", "probe").onnx_path)


def test_models_load_lazily_and_once_under_concurrency(tmp_path: Path) -> None:
    loader = CountingLoader(tmp_path, delay_s=0.1)
    cache = ModelCache(loader, budget_bytes=10**9)
    assert cache.loaded() == []
    got: list[ServedModel] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("v1"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loader.calls == ["v1"]
    assert len({id(m) for m in got}) == 1
    assert cache.loaded() == ["v1"]
    assert cache.peek("v1") is got[0] and cache.peek("v2") is None


def test_least_recently_used_models_are_evicted_within_the_budget(tmp_path: Path) -> None:
    size = one_model_bytes(tmp_path)
    cache = ModelCache(CountingLoader(tmp_path), budget_bytes=int(2.5 * size))
    cache.get("a")
    cache.get("b")
    cache.peek("a")  # b is now the least recently used
    cache.get("c")
    assert cache.loaded() == ["a", "c"]
    assert cache.used_bytes() <= cache.budget_bytes


def test_a_model_in_use_is_not_evicted(tmp_path: Path) -> None:
    size = one_model_bytes(tmp_path)
    cache = ModelCache(CountingLoader(tmp_path), budget_bytes=int(1.5 * size))
    with cache.lease("a") as a:
        cache.get("b")  # over budget, but a is leased: b stays too (soft cap)
        assert sorted(cache.loaded()) == ["a", "b"]
        assert isinstance(a, LoadedModel)
        assert a.predict(np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)).shape == (1, 3)
    cache.get("c")
    assert cache.loaded() == ["c"]


def test_a_model_over_the_whole_budget_still_loads(tmp_path: Path) -> None:
    cache = ModelCache(CountingLoader(tmp_path), budget_bytes=1)
    cache.get("a")
    assert cache.loaded() == ["a"]
    cache.get("b")
    assert cache.loaded() == ["b"]


def test_loader_errors_pass_through_unchanged_and_are_not_cached(tmp_path: Path) -> None:
    loader = CountingLoader(tmp_path)
    cache = ModelCache(loader, budget_bytes=10**9)
    for _ in range(2):
        with pytest.raises(NotFound) as err:
            cache.get("missing-1")
        assert (err.value.status, err.value.param) == (404, "version_id")
    assert loader.calls == ["missing-1", "missing-1"]
    assert cache.loaded() == []
    cache.get("v1")  # the cache still works
    assert cache.loaded() == ["v1"]


def test_concurrent_waiters_all_see_the_loader_error(tmp_path: Path) -> None:
    cache = ModelCache(CountingLoader(tmp_path, delay_s=0.1), budget_bytes=10**9)
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            cache.get("missing-2")
        except NotFound as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4
