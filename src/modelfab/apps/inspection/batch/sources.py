"""The images a batch inspection reads: every image under a folder, or the paths listed
in a text file.

A folder is walked recursively in a deterministic order (entries sorted by name at every
level, files and folders interleaved), streaming: one folder's listing is held at a time
per level. Hidden entries (names starting with ".") and the excluded folder (the output,
when it lies inside the input) are skipped, and links to folders are not followed; files
count when their suffix is one of `modelfab.imaging.IMAGE_SUFFIXES`. A list file
holds one path per line (blank lines and lines starting with "#" are skipped); relative
paths are relative to the list file's folder, and a path listed twice is read once.
Paths are absolute and normalised.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modelfab.errors import InvalidRequest
from modelfab.imaging import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSource:
    """A folder or a list file, checked to exist when opened (see `open_source`)."""

    root: Path
    is_list: bool
    exclude: Path | None = None

    def paths(self) -> Iterator[str]:
        """The input paths, absolute, in the source's order. Re-iterable (each call reads
        the folder or file again). Unreadable sub-folders are logged and skipped."""
        if self.is_list:
            return _listed(self.root)
        return _walk(self.root, self.exclude)

    def count(self) -> int:
        """How many paths `paths` yields (reads only names, not images)."""
        return sum(1 for _ in self.paths())


def open_source(input_path: str, *, exclude: Path | None = None) -> InputSource:
    """The source at `input_path`: a folder, or a file listing paths.

    Raises InvalidRequest (param "input") when it does not exist or cannot be read.
    """
    root = Path(os.path.normpath(input_path))
    if root.is_dir():
        if not os.access(root, os.R_OK | os.X_OK):
            raise InvalidRequest(f"input folder {root} is not readable", param="input")
        return InputSource(root, is_list=False, exclude=exclude)
    if root.is_file():
        if not os.access(root, os.R_OK):
            raise InvalidRequest(f"input list {root} is not readable", param="input")
        return InputSource(root, is_list=True)
    raise InvalidRequest(
        f"input {root} does not exist on the worker's machine; give a folder of images or "
        "a text file with one image path per line",
        param="input",
    )


def _walk(root: Path, exclude: Path | None) -> Iterator[str]:
    skip = str(exclude) if exclude is not None else None
    # A stack of per-folder iterators instead of recursion: no depth limit.
    stack: list[Iterator[os.DirEntry[str]]] = [iter(_sorted_entries(str(root)))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry.name.startswith("."):
            continue
        elif entry.is_dir(follow_symlinks=False):  # no cycles through links
            if entry.path != skip:
                stack.append(iter(_sorted_entries(entry.path)))
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
            yield entry.path


def _sorted_entries(folder: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as exc:
        logger.warning("skipping folder %s: %s", folder, exc)
        return []


def _listed(list_file: Path) -> Iterator[str]:
    base = list_file.parent
    seen: set[str] = set()
    with list_file.open(encoding="utf-8") as lines:
        for line in lines:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            path = os.path.normpath(base / text)  # an absolute `text` replaces `base`
            if path not in seen:
                seen.add(path)
                yield path
