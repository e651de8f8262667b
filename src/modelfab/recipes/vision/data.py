"""Image data for training: a stable train/validation split, decoding, transforms, loaders.

Shared by the vision recipes (classification now, anomaly detection later). Images are
decoded with Pillow and always become 3-channel RGB; transforms use torchvision v2.
"""

from __future__ import annotations

import hashlib
import os
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from modelfab.imaging import to_rgb

Item = tuple[str, int]
"""(relpath under the dataset root, class index)."""

EVAL_RESIZE_RATIO = 1.14
"""Eval resizes the short side to int(size * 1.14), then centre-crops `size` (crop ~0.875)."""

MAX_SIZE_PROBES = 1000
"""`median_short_side` reads the headers of at most this many files, evenly spaced."""


def _unit_hash(seed: int, relpath: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, relpath)."""
    digest = hashlib.sha256(f"{seed}\0{relpath}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_dataset(
    scan_files: list[str], classes: list[str], val_fraction: float, seed: int
) -> tuple[list[Item], list[Item]]:
    """Split "<class>/<name>" relpaths into (train, validation) items, stratified by class.

    A file is held out when a hash of (seed, relpath) falls below `val_fraction`, so the
    split is reproducible and adding or removing a file does not move any other file,
    with one exception kept for small classes: a class with >= 2 images always has at
    least one validation image (the file of lowest hash) and at least one training image
    (the file of highest hash), and which file that is can change as files come and go.
    Both lists keep the order of `scan_files`.

    Raises ValueError for a relpath whose folder is not in `classes`.
    """
    index = {name: i for i, name in enumerate(classes)}
    by_class: dict[int, list[str]] = defaultdict(list)
    for rel in scan_files:
        folder = rel.split("/", 1)[0]
        if folder not in index or "/" not in rel:
            raise ValueError(f"{rel!r} is not inside one of the class folders {classes}")
        by_class[index[folder]].append(rel)
    held_out: set[str] = set()
    for files in by_class.values():
        held_out |= _class_holdout(files, val_fraction, seed)
    train = [(rel, index[rel.split("/", 1)[0]]) for rel in scan_files if rel not in held_out]
    val = [(rel, index[rel.split("/", 1)[0]]) for rel in scan_files if rel in held_out]
    return train, val


def split_unlabelled(
    relpaths: list[str], val_fraction: float, seed: int
) -> tuple[list[Item], list[Item]]:
    """Split images without classes into (train, validation) items of label -1, by the
    rule `split_dataset` applies to one class: reproducible per file, at least one image
    on each side when there are two or more."""
    held_out = _class_holdout(relpaths, val_fraction, seed)
    train = [(rel, -1) for rel in relpaths if rel not in held_out]
    return train, [(rel, -1) for rel in relpaths if rel in held_out]


def _class_holdout(files: list[str], val_fraction: float, seed: int) -> set[str]:
    """The validation files of one class (see `split_dataset`)."""
    if len(files) < 2:
        return set()
    ranked = sorted(files, key=lambda rel: (_unit_hash(seed, rel), rel))
    held = {rel for rel in ranked if _unit_hash(seed, rel) < val_fraction}
    held.add(ranked[0])
    held.discard(ranked[-1])
    return held


def median_short_side(root: Path, relpaths: Sequence[str]) -> int:
    """Median of min(width, height) in pixels over up to MAX_SIZE_PROBES evenly spaced files.

    Reads image headers only (Pillow opens lazily). Raises ValueError for no files.
    """
    if not relpaths:
        raise ValueError("no images")
    step = max(1, len(relpaths) // MAX_SIZE_PROBES)
    sides = []
    for rel in relpaths[::step]:
        with Image.open(root / rel) as img:
            sides.append(min(img.size))
    return int(statistics.median(sides))


def build_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    train: bool,
    augment: bool,
) -> v2.Compose:
    """PIL image -> normalised float tensor (3, size, size).

    Training with `augment`: RandomResizedCrop(size, scale=(0.6, 1)), horizontal flip and a
    small colour jitter. Otherwise (eval, or training without augment): resize the short
    side to int(size * EVAL_RESIZE_RATIO) and centre-crop `size`.
    """
    if train and augment:
        geometry: list[v2.Transform] = [
            v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        ]
    else:
        geometry = [
            v2.Resize(int(size * EVAL_RESIZE_RATIO), antialias=True),
            v2.CenterCrop(size),
        ]
    return v2.Compose(
        [
            *geometry,
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


class ImageListDataset(Dataset[tuple[torch.Tensor, int]]):
    """(image tensor, class index) for each (relpath, index) item under `root`.

    Decoding errors propagate (the dataset was validated before training).
    """

    def __init__(self, root: Path, items: Sequence[Item], transform: v2.Compose) -> None:
        self.root = root
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rel, label = self.items[i]
        with Image.open(self.root / rel) as img:
            rgb = to_rgb(img)
        tensor: torch.Tensor = self.transform(rgb)
        return tensor, label


def auto_num_workers(cuda: bool, cpu_count: int | None = None) -> int:
    """Data-loading processes: min(4, cpus - 1) next to a GPU; on CPU, where workers take
    cores from the training threads, 0 with <= 2 cpus, else min(2, (cpus - 2) // 2)."""
    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    if cuda:
        return max(0, min(4, cpus - 1))
    return max(0, min(2, (cpus - 2) // 2))


def make_loaders(
    root: Path,
    train_items: Sequence[Item],
    val_items: Sequence[Item],
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool,
    batch_size: int,
    num_workers: int,
    device: torch.device,
) -> tuple[DataLoader[tuple[torch.Tensor, int]], DataLoader[tuple[torch.Tensor, int]]]:
    """(train loader, validation loader).

    Train shuffles (drawing from the global torch RNG, so restoring its state on resume
    replays the same order) and drops a last partial batch when there is a full one, so
    batch norm never sees a batch of one. Pins memory on CUDA; workers persist when > 0.
    """
    train_ds = ImageListDataset(
        root, train_items, build_transform(image_size, mean, std, train=True, augment=augment)
    )
    val_ds = ImageListDataset(
        root, val_items, build_transform(image_size, mean, std, train=False, augment=False)
    )
    return (
        _loader(train_ds, batch_size, num_workers, device, train=True),
        _loader(val_ds, batch_size, num_workers, device, train=False),
    )


def _loader(
    dataset: ImageListDataset, batch_size: int, workers: int, device: torch.device, *, train: bool
) -> DataLoader[tuple[torch.Tensor, int]]:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) >= batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
