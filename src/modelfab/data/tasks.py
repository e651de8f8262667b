"""The dataset tasks modelfab knows and the file suffixes it treats as images."""

from __future__ import annotations

import logging

from modelfab.errors import InvalidRequest

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("image-classification", "anomaly-detection")
"""Every task a dataset can be typed by; a dataset's layout rules follow from its task."""

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
)
"""Lower-case suffixes of image files; compare with `Path(name).suffix.lower()`."""


def check_task(task: str) -> str:
    """Return `task` unchanged when it is one of `TASKS`.

    Raises:
        InvalidRequest: (param "task") naming the valid tasks otherwise.
    """
    if task in TASKS:
        return task
    valid = ", ".join(repr(t) for t in TASKS)
    raise InvalidRequest(f"unknown task {task!r}; use one of {valid}", param="task")
