"""The `images` task: a folder of images without classes.

Unlabelled pictures of the domain, for recipes that make their own targets (`llm-distill`
with an image-classification teacher learns its soft labels on them). Any folder layout is
taken, sub-folders included, as long as every file is an image that decodes; folder names
carry no meaning. No model has this task: it is a kind of dataset only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, Field

from modelfab.data.validate import Survey, Tree, image_stats, probe_images, require_image_suffixes
from modelfab.errors import DatasetInvalid
from modelfab.tasks.base import TaskSpec

logger = logging.getLogger(__name__)

NAME = "images"
"""The task's name; import it rather than spelling the string."""

MIN_IMAGES = 2
"""Fewest images: a recipe holds at least one out to evaluate on and trains on another."""


class NoAnswer(BaseModel):
    """Models are not trained as `images` models: no endpoint answers in this task's name."""

    detail: str = Field(default="no model has this task", description="Always the same.")


def survey(root: Path, tree: Tree) -> Survey:
    """Every file an image that decodes, at least MIN_IMAGES of them; stats: folders, and the
    num_images, image sizes and modes of `image_stats`."""
    require_image_suffixes(tree.files)
    if len(tree.files) < MIN_IMAGES:
        found = tree.files[0] if tree.files else "no image"
        raise DatasetInvalid(
            f"an images dataset needs at least {MIN_IMAGES} images (one is held out to "
            f"evaluate on); found {found}: add images",
            param=tree.files[0] if tree.files else ".",
        )
    probes = probe_images(root, tree.files)
    stats = {"task": NAME, "folders": len(tree.dirs), **image_stats(probes.values())}
    return Survey(entries={rel: p.entry for rel, p in probes.items()}, stats=stats)


SPEC = TaskSpec(
    name=NAME,
    description="Images without classes (unlabelled), for recipes that make their own targets.",
    layout="any folder of images (sub-folders allowed, their names are ignored)",
    surveyor=survey,
    result=NoAnswer,
)
