"""The `image-classification` task: one folder per class, images inside."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, Field

from modelfab.data.validate import (
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

NAME = "image-classification"
"""The task's name; import it rather than spelling the string."""


class ClassScore(BaseModel):
    label: str = Field(description="A class name (a folder of the training dataset).")
    score: float = Field(description="Its softmax probability.")


class ClassificationResult(BaseModel):
    """One image's answer from a classifier endpoint."""

    label: str = Field(description="The most probable class.")
    score: float = Field(description="Its probability.")
    top_k: list[ClassScore] = Field(description="The `top_k` best classes (default 1).")


def class_folders(tree: Tree) -> dict[str, list[str]]:
    """{class folder: its image relpaths} of a classification dataset. Raises
    DatasetInvalid for files in the root, nested folders, non-images, empty classes,
    fewer than two classes."""
    direct, groups, deeper = children(tree, "")
    if direct:
        raise DatasetInvalid(
            f"{direct[0]} lies in the dataset root; images must be inside a folder per class "
            "(<class>/<image>); move it into its class folder or remove it",
            param=direct[0],
        )
    if deeper:
        raise DatasetInvalid(
            f"{deeper[0]} is a folder inside a class folder; class folders must hold images "
            "only: move its images up into the class folder or make it a class of its own",
            param=deeper[0],
        )
    require_image_suffixes(tree.files)
    for folder, images in groups.items():
        if not images:
            raise DatasetInvalid(
                f"class {folder!r} has no images; add images to {folder}/ or remove it",
                param=folder,
            )
    if len(groups) < 2:
        names = ", ".join(repr(g) for g in groups)
        raise DatasetInvalid(
            f"found {len(groups)} class ({names}); image classification needs at least two "
            "folders, one per class, each holding that class's images",
            param=next(iter(groups), "."),
        )
    return groups


def survey(root: Path, tree: Tree) -> Survey:
    """Layout first, then every image decoded; stats: classes (images per class folder)."""
    groups = class_folders(tree)
    probes = probe_images(root, tree.files)
    stats = {
        "task": NAME,
        "classes": {folder: len(rels) for folder, rels in sorted(groups.items())},
        **image_stats(probes.values()),
    }
    return Survey(entries={rel: p.entry for rel, p in probes.items()}, stats=stats)


SPEC = TaskSpec(
    name=NAME,
    description="Sort images into classes.",
    layout="<class>/<image>: one folder per class (two or more), each holding its images",
    surveyor=survey,
    result=ClassificationResult,
    served_model="modelfab.serving.classifier:LoadedModel",
    serving_artifacts=("model.onnx", "labels.json"),
)
