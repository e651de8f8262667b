"""The file suffixes modelfab treats as images.

Task types themselves (names, layouts, served-model kinds) are a registry in
`modelfab.tasks`; this module names no task.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
)
"""Lower-case suffixes of image files; compare with `Path(name).suffix.lower()`."""
