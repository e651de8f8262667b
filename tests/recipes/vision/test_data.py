"""Splitting, decoding, transforms and loaders of `modelfab.recipes.vision.data`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from modelfab.recipes.vision.data import (
    ImageListDataset,
    auto_num_workers,
    build_transform,
    make_loaders,
    median_short_side,
    split_dataset,
    to_rgb,
)

CLASSES = ["cat", "dog", "owl"]


def relpaths(counts: dict[str, int]) -> list[str]:
    return sorted(f"{name}/{i:04d}.png" for name, n in counts.items() for i in range(n))


# --------------------------------------------------------------------------- split


def test_split_is_reproducible_stratified_and_disjoint() -> None:
    files = relpaths({"cat": 50, "dog": 30, "owl": 20})
    train, val = split_dataset(files, CLASSES, 0.2, seed=7)
    assert (train, val) == split_dataset(list(files), CLASSES, 0.2, seed=7)
    assert sorted(rel for rel, _ in train + val) == files
    assert {rel for rel, _ in train}.isdisjoint(rel for rel, _ in val)
    assert all(CLASSES[label] == rel.split("/")[0] for rel, label in train + val)
    assert {label for _, label in val} == {0, 1, 2}
    assert 10 <= len(val) <= 32  # ~20 of 100, hash noise allowed
    assert split_dataset(files, CLASSES, 0.2, seed=8) != (train, val)


def test_adding_a_file_moves_no_other_file() -> None:
    files = relpaths({"cat": 40, "dog": 40, "owl": 40})
    _, val = split_dataset(files, CLASSES, 0.25, seed=0)
    for extra in ("cat/zz-new.png", "owl/0000a.png", "dog/new.jpg"):
        _, val2 = split_dataset(sorted([*files, extra]), CLASSES, 0.25, seed=0)
        held, held2 = {r for r, _ in val}, {r for r, _ in val2}
        assert held2 - {extra} == held


def test_every_class_with_two_images_gets_one_validation_and_one_training_image() -> None:
    files = relpaths({"cat": 2, "dog": 3, "owl": 1})
    for seed in range(20):
        for fraction in (0.01, 0.2, 0.99):
            train, val = split_dataset(files, CLASSES, fraction, seed)
            assert {lab for _, lab in val} == {0, 1}  # owl has a single image: training only
            assert {lab for _, lab in train} == {0, 1, 2}


def test_split_rejects_files_outside_the_classes() -> None:
    with pytest.raises(ValueError, match="class folders"):
        split_dataset(["bird/1.png"], CLASSES, 0.2, 0)


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "I;16", "CMYK"])
def test_any_mode_decodes_to_normalised_rgb(tmp_path: Path, mode: str) -> None:
    img = Image.new("RGB", (50, 30), (200, 100, 50)).convert(mode)
    if mode == "P":
        img.info["transparency"] = 0
    suffix = ".jpg" if mode == "CMYK" else ".png"
    img.save(tmp_path / f"x{suffix}")
    transform = build_transform(32, (0.5,) * 3, (0.5,) * 3, train=False, augment=False)
    dataset = ImageListDataset(tmp_path, [(f"x{suffix}", 1)], transform)
    x, label = dataset[0]
    assert label == 1 and x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert -1.0 <= float(x.min()) <= float(x.max()) <= 1.0


def test_sixteen_bit_greyscale_is_rescaled_not_clipped() -> None:
    img = Image.new("I;16", (4, 4), 32768)
    assert to_rgb(img).getpixel((0, 0)) == (128, 128, 128)


def test_train_transform_augments_and_eval_is_deterministic() -> None:
    img = Image.effect_noise((80, 60), 50).convert("RGB")
    train = build_transform(48, (0.5,) * 3, (0.5,) * 3, train=True, augment=True)
    evaluate = build_transform(48, (0.5,) * 3, (0.5,) * 3, train=False, augment=False)
    assert train(img).shape == evaluate(img).shape == (3, 48, 48)
    assert not torch.equal(train(img), train(img))
    assert torch.equal(evaluate(img), evaluate(img))


def test_loaders_drop_a_partial_training_batch(tmp_path: Path) -> None:
    items = []
    for i in range(10):
        Image.new("RGB", (20, 20), (i * 20, 0, 0)).save(tmp_path / f"{i}.png")
        items.append((f"{i}.png", i % 2))
    train, val = make_loaders(
        tmp_path, items[:7], items[7:], image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3,
        augment=True, batch_size=4, num_workers=0, device=torch.device("cpu"),
    )  # fmt: skip
    assert [len(b[0]) for b in train] == [4]
    assert [len(b[0]) for b in val] == [3]
    assert train.pin_memory is False


def test_auto_num_workers() -> None:
    assert auto_num_workers(cuda=True, cpu_count=16) == 4
    assert auto_num_workers(cuda=True, cpu_count=2) == 1
    assert auto_num_workers(cuda=False, cpu_count=2) == 0
    assert auto_num_workers(cuda=False, cpu_count=4) == 1
    assert auto_num_workers(cuda=False, cpu_count=64) == 2


def test_median_short_side(tmp_path: Path) -> None:
    for i, size in enumerate([(100, 40), (50, 300), (64, 64)]):
        Image.new("RGB", size).save(tmp_path / f"{i}.png")
    assert median_short_side(tmp_path, ["0.png", "1.png", "2.png"]) == 50
