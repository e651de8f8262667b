"""The `anomaly-detection` task: good parts to train on, optionally a labelled test set.

Layout: train/good/<images>; optionally test/good/, test/<defect>/ and
ground_truth/<defect>/<image stem>_mask.png (masks the size of their images).
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, Field

from modelfab.data.validate import (
    ImageProbe,
    Survey,
    Tree,
    children,
    image_stats,
    probe_images,
    require_image_suffixes,
)
from modelfab.errors import DatasetInvalid
from modelfab.tasks.base import TaskSpec

logger = logging.getLogger(__name__)

NAME = "anomaly-detection"
"""The task's name; import it rather than spelling the string."""

_TOP = ("train", "test", "ground_truth")
LAYOUT = (
    "anomaly detection expects train/good/<images>, optionally test/good/, "
    "test/<defect>/ and ground_truth/<defect>/<name>_mask.png"
)


class Heatmap(BaseModel):
    format: str = Field(description='"png": 8-bit greyscale.')
    encoding: str = Field(description='"base64".')
    width: int
    height: int
    scale: float = Field(description="The anomaly-map value drawn as 255.")
    data: str = Field(description="The PNG, base64.")


class AnomalyResult(BaseModel):
    """One image's answer from a detector endpoint."""

    score: float = Field(description="The image's anomaly score.")
    threshold: float | None = Field(description="The threshold applied; null if none.")
    is_anomaly: bool | None = Field(description="score >= threshold; null without one.")
    label: str | None = Field(description='"anomaly", "good", or null without a threshold.')
    heatmap: Heatmap | None = Field(default=None, description="Unless heatmap=false.")


def _ad_check_top(tree: Tree) -> None:
    direct, groups, _ = children(tree, "")
    for rel in direct + [g for g in groups if g not in _TOP]:
        raise DatasetInvalid(
            f"unexpected entry {rel!r} at the dataset root; {LAYOUT}; remove or move it",
            param=rel,
        )


def _ad_flat_folders(tree: Tree, base: str, what: str) -> dict[str, list[str]]:
    """Sub-folders of `base` that must hold files only; `what` says what belongs there."""
    direct, groups, deeper = children(tree, base)
    if direct:
        raise DatasetInvalid(
            f"{direct[0]} lies directly in {base}/; {what}; move it there or remove it",
            param=direct[0],
        )
    if deeper:
        raise DatasetInvalid(
            f"{deeper[0]} is a nested folder; {what}; move its files up or remove it",
            param=deeper[0],
        )
    return groups


def _ad_train(tree: Tree) -> dict[str, list[str]]:
    groups = _ad_flat_folders(tree, "train", "training images belong in train/good/")
    for folder in groups:
        if folder != "train/good":
            raise DatasetInvalid(
                f"{folder} is not allowed: anomaly detection trains on good parts only; "
                "put defective images under test/<defect>/",
                param=folder,
            )
    if not groups.get("train/good"):
        raise DatasetInvalid(
            f"train/good/ is missing or holds no images; {LAYOUT}",
            param="train/good",
        )
    return groups


def _ad_test(tree: Tree) -> dict[str, list[str]]:
    groups = _ad_flat_folders(tree, "test", "test images belong in test/good/ or test/<defect>/")
    for folder, images in groups.items():
        if not images:
            raise DatasetInvalid(
                f"{folder} has no images; add images or remove the folder", param=folder
            )
    return groups


def _ad_masks(tree: Tree, tests: dict[str, list[str]]) -> dict[str, str]:
    """Map each mask ground_truth/<d>/<stem>_mask.<ext> to its image test/<d>/<stem>.<ext>."""
    groups = _ad_flat_folders(tree, "ground_truth", "masks belong in ground_truth/<defect>/")
    by_stem: dict[str, str] = {}
    for images in tests.values():
        for rel in reversed(images):  # reversed: the first image in sorted order wins
            p = PurePosixPath(rel)
            by_stem[str(p.with_suffix(""))] = rel
    masks: dict[str, str] = {}
    for mask in (m for files in groups.values() for m in files):
        p = PurePosixPath(mask)
        stem = p.stem.removesuffix("_mask")
        image = by_stem.get(f"test/{p.parent.name}/{stem}")
        if not p.stem.endswith("_mask") or image is None:
            raise DatasetInvalid(
                f"{mask} has no matching image test/{p.parent.name}/{stem}.<ext>; a mask "
                "must be named <image stem>_mask.png after an image of the same defect "
                "folder; add the image or remove the mask",
                param=mask,
            )
        masks[mask] = image
    return masks


def _check_mask_sizes(masks: dict[str, str], probes: dict[str, ImageProbe]) -> None:
    for mask, image in sorted(masks.items()):
        mask_dims, image_dims = probes[mask].dims, probes[image].dims
        if mask_dims != image_dims:
            raise DatasetInvalid(
                f"{mask} is {mask_dims[0]}x{mask_dims[1]} but its image {image} is "
                f"{image_dims[0]}x{image_dims[1]}; a mask must have its image's size",
                param=mask,
            )


def survey(root: Path, tree: Tree) -> Survey:
    """Layout first, then every image and mask decoded and masks sized against their
    images; stats: splits (images per folder), defect_types, num_masks."""
    _ad_check_top(tree)
    groups = _ad_train(tree)
    tests = _ad_test(tree)
    groups.update(tests)
    require_image_suffixes(tree.files)
    masks = _ad_masks(tree, tests)
    probes = probe_images(root, tree.files)
    _check_mask_sizes(masks, probes)
    counts = {folder: len(rels) for folder, rels in sorted(groups.items())}
    stats = {
        "task": NAME,
        "splits": counts,
        "defect_types": sorted(
            f.removeprefix("test/") for f in counts if f.startswith("test/") and f != "test/good"
        ),
        "num_masks": len(masks),
        **image_stats(probes[rel] for rels in groups.values() for rel in rels),
    }
    return Survey(entries={rel: p.entry for rel, p in probes.items()}, stats=stats)


SPEC = TaskSpec(
    name=NAME,
    description="Find defects, trained on good parts only.",
    layout=LAYOUT,
    surveyor=survey,
    result=AnomalyResult,
    served_model="modelfab.serving.anomaly:AnomalyModel",
    serving_artifacts=("model.onnx", "labels.json"),
)
