"""Image-folder factories for the data tests: tiny, deterministic, Pillow only."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from PIL import Image

from tests.factories import write_image


def write_noise(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """A noisy RGB image: compresses badly, so cutting the file loses pixel data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.effect_noise(size, 60).convert("RGB").save(path)
    return path


def truncate(path: Path) -> Path:
    """Cut a file in half in place."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_classification(root: Path, classes: Mapping[str, int] | None = None) -> Path:
    """`root/<class>/<i>.png` with `classes[name]` images each; default cat: 3, dog: 2."""
    classes = {"cat": 3, "dog": 2} if classes is None else classes
    for c, (name, count) in enumerate(classes.items()):
        for i in range(count):
            write_image(root / name / f"{i:03d}.png", seed=c * 100 + i)
    return root


def make_anomaly(root: Path) -> Path:
    """An MVTec-style dataset.

    train/good: 3 images 8x6; test/good: 1; test/scratch: 2 (10x10, with masks);
    test/dent: 1 JPEG 8x6 in mode L, no mask.
    """
    for i in range(3):
        write_image(root / "train" / "good" / f"{i:03d}.png", seed=i)
    write_image(root / "test" / "good" / "000.png", seed=10)
    for i in range(2):
        write_image(root / "test" / "scratch" / f"{i:03d}.png", size=(10, 10), seed=20 + i)
        write_image(
            root / "ground_truth" / "scratch" / f"{i:03d}_mask.png", size=(10, 10), mode="L"
        )
    write_image(root / "test" / "dent" / "000.jpg", mode="L", seed=30)
    return root


@pytest.fixture
def cls_root(tmp_path: Path) -> Path:
    """A valid two-class classification dataset (cat: 3, dog: 2)."""
    return make_classification(tmp_path / "cls")


@pytest.fixture
def ad_root(tmp_path: Path) -> Path:
    """A valid anomaly-detection dataset; see `make_anomaly`."""
    return make_anomaly(tmp_path / "ad")
