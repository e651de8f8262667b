"""Dataset validation, task-free: walk a folder, hash and probe files, the content address.

`scan_dataset(root, kind)` decides what a dataset *is*: which files belong to it, that
the `kind` (a task's `DatasetKind`, see `modelfab.tasks`) accepts their layout and content,
and the content address (sha256) that makes the same content the same dataset version
wherever it lives. The task-specific rules (layouts, stats) live with each task in
`modelfab.tasks`, which builds them from the helpers here; this module names no task.

Ignored everywhere: hidden entries (name starts with '.'), `Thumbs.db`, `__MACOSX`.
Ignored at the root only: README*, LICENSE*, *.txt files. Ignored files are not part of
the dataset and not part of its hash.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

from PIL import Image, ImageFile, UnidentifiedImageError

from modelfab.artifacts import hash_path
from modelfab.errors import DatasetInvalid
from modelfab.imaging import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

"""Read size when hashing files."""

_IGNORED_NAMES = frozenset({"thumbs.db", "__macosx"})
_ROOT_DOC_PREFIXES = ("README", "LICENSE", "LICENCE")


@dataclass(frozen=True)
class FileEntry:
    """One file of a dataset."""

    relpath: str
    """POSIX path relative to the dataset root."""
    sha256: str
    """Hex sha256 of the file's bytes."""
    size: int
    """Size in bytes."""


@dataclass(frozen=True)
class DatasetScan:
    """The result of a successful `scan_dataset`."""

    task: str
    files: tuple[FileEntry, ...]
    """Every file that belongs to the dataset, sorted by relpath."""
    stats: dict[str, Any]
    """JSON-serialisable summary (counts, image sizes, modes); shape depends on the task."""
    sha256: str
    """Content address; see `content_address`."""


@dataclass(frozen=True)
class Tree:
    """What a dataset folder holds, ignored names left out."""

    files: list[str]
    """Sorted relpaths of every regular, non-ignored file."""
    dirs: list[str]
    """Sorted relpaths of every non-ignored directory."""


@dataclass
class Survey:
    """What a task's survey of a tree found: every file's entry and the dataset's stats."""

    entries: dict[str, FileEntry]
    """relpath -> entry, for every file of the tree (each hashed, and checked as the task
    requires)."""
    stats: dict[str, Any] = field(default_factory=dict)
    """JSON-serialisable summary; its shape is the task's."""


class DatasetKind(Protocol):
    """What `scan_dataset` needs of a task (`modelfab.tasks.TaskSpec` is one)."""

    @property
    def name(self) -> str:
        """The task name, recorded in the scan."""
        ...

    def survey(self, root: Path, tree: Tree) -> Survey:
        """Check the layout of `tree` (the walk of `root`), hash and check every file,
        summarise. Raises DatasetInvalid naming the offending relpath and what to do."""
        ...


@dataclass(frozen=True)
class ImageProbe:
    """One image file, hashed and fully decoded."""

    entry: FileEntry
    dims: tuple[int, int]
    """(width, height) in pixels."""
    mode: str
    """Pillow mode ("RGB", "L", ...)."""


# --------------------------------------------------------------------------- hashing


def content_address(entries: Iterable[FileEntry]) -> str:
    """Hex sha256 over the lines f"{relpath}\\0{sha256}\\n" of `entries` in relpath order."""
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e.relpath):
        digest.update(f"{entry.relpath}\0{entry.sha256}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- walking


def is_ignored(name: str) -> bool:
    """True for names that are never part of a dataset: hidden, Thumbs.db, __MACOSX."""
    return name.startswith(".") or name.lower() in _IGNORED_NAMES


def _is_root_doc(name: str) -> bool:
    return name.upper().startswith(_ROOT_DOC_PREFIXES) or name.lower().endswith(".txt")


def _entry_problem(entry: os.DirEntry[str], rel: str) -> str | None:
    """Why a directory entry cannot be part of a dataset, or None when it can."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return f"{rel!r} has a name that is not valid UTF-8; rename it"
    if entry.is_symlink():
        return f"{rel} is a symbolic link; replace it with the file it points to or remove it"
    if not entry.is_dir(follow_symlinks=False) and not entry.is_file(follow_symlinks=False):
        return f"{rel} is not a regular file or folder; remove it"
    return None


def walk(root: Path) -> Tree:
    """List the dataset's files and folders, skipping ignored names.

    Raises:
        DatasetInvalid: for the first (sorted) symlink, special file or non-UTF-8 name.
    """
    files: list[str] = []
    dirs: list[str] = []
    problems: list[tuple[str, str]] = []
    stack: list[tuple[str, str]] = [("", str(root))]
    while stack:
        base, path = stack.pop()
        with os.scandir(path) as it:
            for entry in it:
                if is_ignored(entry.name):
                    continue
                rel = f"{base}/{entry.name}" if base else entry.name
                problem = _entry_problem(entry, rel)
                if problem is not None:
                    problems.append((rel, problem))
                elif entry.is_dir(follow_symlinks=False):
                    dirs.append(rel)
                    stack.append((rel, entry.path))
                elif base or not _is_root_doc(entry.name):
                    files.append(rel)
    if problems:
        rel, message = min(problems)
        raise DatasetInvalid(message, param=rel)
    return Tree(files=sorted(files), dirs=sorted(dirs))


# --------------------------------------------------------------------------- layouts


def children(tree: Tree, base: str) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """Split what lies under folder `base` ("" = root).

    Returns (files directly in base, {sub-folder: files directly in it}, deeper folders).
    Every sub-folder appears in the dict, empty ones with an empty list.
    """
    prefix = f"{base}/" if base else ""
    depth = base.count("/") + 1 if base else 0
    direct: list[str] = []
    groups: dict[str, list[str]] = {}
    deeper: list[str] = []
    for d in tree.dirs:
        if d.startswith(prefix):
            parts = d.split("/")
            if len(parts) == depth + 1:
                groups[d] = []
            else:
                deeper.append(d)
    for f in tree.files:
        if f.startswith(prefix):
            parts = f.split("/")
            if len(parts) == depth + 1:
                direct.append(f)
            elif len(parts) == depth + 2:
                groups["/".join(parts[:-1])].append(f)
    return direct, groups, deeper


def require_suffixes(files: list[str], suffixes: frozenset[str], what: str = "an image") -> None:
    """Raises DatasetInvalid (param: the file) for the first of `files` whose lower-case
    suffix is not in `suffixes`; `what` names the kind of file expected."""
    for rel in files:
        if PurePosixPath(rel).suffix.lower() not in suffixes:
            allowed = ", ".join(sorted(suffixes))
            raise DatasetInvalid(
                f"{rel} is not {what} (expected one of {allowed}); "
                "remove it or move it out of the dataset",
                param=rel,
            )


def require_image_suffixes(files: list[str]) -> None:
    """`require_suffixes` with `IMAGE_SUFFIXES`."""
    require_suffixes(files, IMAGE_SUFFIXES)


# --------------------------------------------------------------------------- decoding


class _StrictDecoding:
    """Holds `ImageFile.LOAD_TRUNCATED_IMAGES` False while any scan runs, then restores it.

    Pillow keeps the flag as module state; a reference count lets concurrent scans share it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._saved = ImageFile.LOAD_TRUNCATED_IMAGES
                if self._saved:
                    logger.warning("LOAD_TRUNCATED_IMAGES was set; disabled while scanning")
                ImageFile.LOAD_TRUNCATED_IMAGES = False
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    ImageFile.LOAD_TRUNCATED_IMAGES = self._saved


_strict_decoding = _StrictDecoding()


def _decode_reason(exc: Exception, path: Path) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "cannot identify image file"
    # Pillow messages may carry the absolute server path; keep only the file name.
    reason = str(exc).replace(str(path), path.name) or type(exc).__name__
    return reason


def _probe(root: Path, rel: str) -> ImageProbe | str:
    """Hash and fully decode one file; return its probe, or the user-facing error message."""
    path = root / rel
    try:
        digest, size = hash_path(path)
    except OSError as exc:
        return f"{rel} could not be read ({exc.strerror or exc}); remove or replace it"
    try:
        with Image.open(path) as img:
            img.load()
            dims, mode = img.size, img.mode
    except Exception as exc:  # any decoder failure (bomb, truncation, garbage) is the file's
        return f"{rel} is not a readable image ({_decode_reason(exc, path)}); remove or replace it"
    return ImageProbe(FileEntry(relpath=rel, sha256=digest, size=size), dims, mode)


def probe_images(root: Path, rels: list[str]) -> dict[str, ImageProbe]:
    """Hash and fully decode the images `rels` on a thread pool (Pillow releases the GIL
    while decoding). Blocks (CPU and disk bound).

    Raises:
        DatasetInvalid: for the first bad file in `rels` order; later work is cancelled.
    """
    with _strict_decoding():
        return _map_files(root, rels, _probe)


def hash_files(root: Path, rels: list[str]) -> dict[str, FileEntry]:
    """Hash the files `rels` on a thread pool, for tasks whose files are not images.

    Raises:
        DatasetInvalid: for the first unreadable file in `rels` order.
    """
    return _map_files(root, rels, _hash_entry)


def _hash_entry(root: Path, rel: str) -> FileEntry | str:
    try:
        digest, size = hash_path(root / rel)
    except OSError as exc:
        return f"{rel} could not be read ({exc.strerror or exc}); remove or replace it"
    return FileEntry(relpath=rel, sha256=digest, size=size)


P = TypeVar("P")


def _map_files(root: Path, rels: list[str], fn: Callable[[Path, str], P | str]) -> dict[str, P]:
    """`fn(root, rel)` for every rel on a thread pool; a str result is the file's error.

    Raises:
        DatasetInvalid: for the first bad file in `rels` order; later work is cancelled.
    """
    workers = min(8, os.cpu_count() or 1)
    probes: dict[str, P] = {}
    with ThreadPoolExecutor(workers, "modelfab-scan") as pool:
        try:
            for rel, result in zip(rels, pool.map(lambda r: fn(root, r), rels), strict=True):
                if isinstance(result, str):
                    raise DatasetInvalid(result, param=rel)
                probes[rel] = result
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return probes


# --------------------------------------------------------------------------- stats


def size_stats(dims: list[tuple[int, int]]) -> dict[str, Any]:
    """min / max by pixel area (ties by width, height); most common with ties to the smaller."""
    counts = Counter(dims)
    by_area = sorted(counts, key=lambda d: (d[0] * d[1], d))
    common, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"min": list(by_area[0]), "max": list(by_area[-1]), "most_common": [list(common), n]}


def image_stats(probes: Iterable[ImageProbe]) -> dict[str, Any]:
    """num_images, image_sizes (see `size_stats`) and modes (count per Pillow mode) of the
    images `probes`: the stats every image task shares."""
    images = list(probes)
    return {
        "num_images": len(images),
        "image_sizes": size_stats([p.dims for p in images]),
        "modes": dict(sorted(Counter(p.mode for p in images).items())),
    }


# --------------------------------------------------------------------------- entry point


def scan_dataset(root: Path, kind: DatasetKind) -> DatasetScan:
    """Validate the dataset folder `root` as `kind` says and compute its content address.

    Reads every file (blocking; CPU and disk bound). Structural problems are reported
    before content problems; among bad files, the first in sorted relpath order is reported.

    Raises:
        DatasetInvalid: with `param` the offending file or folder relative to `root`
            ("." for the root itself) and a message that says what to do.
    """
    if not root.is_dir():
        raise DatasetInvalid("the dataset is not a folder; upload a folder or archive", param=".")
    tree = walk(root)
    if not tree.files:
        raise DatasetInvalid("the dataset is empty; add files in the layout of its task", param=".")
    survey = kind.survey(root, tree)
    missing = [rel for rel in tree.files if rel not in survey.entries]
    if missing:  # a task bug, not the user's: every file must be hashed into the address
        raise RuntimeError(f"task {kind.name!r} did not survey {missing[0]}")
    files = tuple(survey.entries[rel] for rel in tree.files)
    scan = DatasetScan(
        task=kind.name, files=files, stats=survey.stats, sha256=content_address(files)
    )
    logger.info("scanned %s dataset %s: %d files", kind.name, scan.sha256[:12], len(files))
    return scan
