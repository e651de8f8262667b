"""Dataset validation: walk a folder, check its layout for a task, decode and hash every image.

`scan_dataset` is the only entry point that decides what a dataset *is*: which files
belong to it, whether each is an image Pillow can fully decode, and the content address
(sha256) that makes the same content the same dataset version wherever it lives.

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
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image, ImageFile, UnidentifiedImageError

from modelfab.data.tasks import IMAGE_SUFFIXES, check_task
from modelfab.errors import DatasetInvalid

logger = logging.getLogger(__name__)

CHUNK_BYTES = 2**20
"""Read size when hashing files."""

_IGNORED_NAMES = frozenset({"thumbs.db", "__macosx"})
_ROOT_DOC_PREFIXES = ("README", "LICENSE", "LICENCE")
_AD_TOP = ("train", "test", "ground_truth")
_AD_LAYOUT = (
    "anomaly detection expects train/good/<images>, optionally test/good/, "
    "test/<defect>/ and ground_truth/<defect>/<name>_mask.png"
)


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
class _Tree:
    files: list[str]  # sorted relpaths of every regular, non-ignored file
    dirs: list[str]  # sorted relpaths of every non-ignored directory


@dataclass
class _Layout:
    groups: dict[str, list[str]] = field(default_factory=dict)  # folder -> image relpaths
    masks: dict[str, str] = field(default_factory=dict)  # mask relpath -> image relpath


@dataclass(frozen=True)
class _Probe:
    entry: FileEntry
    dims: tuple[int, int]
    mode: str


# --------------------------------------------------------------------------- hashing


def hash_file(path: Path) -> tuple[str, int]:
    """Return (hex sha256, size in bytes) of `path`, read in 1 MiB chunks. Raises OSError."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


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


def _walk(root: Path) -> _Tree:
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
    return _Tree(files=sorted(files), dirs=sorted(dirs))


# --------------------------------------------------------------------------- layouts


def _children(tree: _Tree, base: str) -> tuple[list[str], dict[str, list[str]], list[str]]:
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


def _require_image_suffixes(files: list[str]) -> None:
    for rel in files:
        if PurePosixPath(rel).suffix.lower() not in IMAGE_SUFFIXES:
            allowed = ", ".join(sorted(IMAGE_SUFFIXES))
            raise DatasetInvalid(
                f"{rel} is not an image (expected one of {allowed}); "
                "remove it or move it out of the dataset",
                param=rel,
            )


def _classification_layout(tree: _Tree) -> _Layout:
    direct, groups, deeper = _children(tree, "")
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
    _require_image_suffixes(tree.files)
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
    return _Layout(groups=groups)


def _ad_check_top(tree: _Tree) -> None:
    direct, groups, _ = _children(tree, "")
    for rel in direct + [g for g in groups if g not in _AD_TOP]:
        raise DatasetInvalid(
            f"unexpected entry {rel!r} at the dataset root; {_AD_LAYOUT}; remove or move it",
            param=rel,
        )


def _ad_flat_folders(tree: _Tree, base: str, what: str) -> dict[str, list[str]]:
    """Sub-folders of `base` that must hold files only; `what` says what belongs there."""
    direct, groups, deeper = _children(tree, base)
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


def _ad_train(tree: _Tree) -> dict[str, list[str]]:
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
            f"train/good/ is missing or holds no images; {_AD_LAYOUT}",
            param="train/good",
        )
    return groups


def _ad_test(tree: _Tree) -> dict[str, list[str]]:
    groups = _ad_flat_folders(tree, "test", "test images belong in test/good/ or test/<defect>/")
    for folder, images in groups.items():
        if not images:
            raise DatasetInvalid(
                f"{folder} has no images; add images or remove the folder", param=folder
            )
    return groups


def _ad_masks(tree: _Tree, tests: dict[str, list[str]]) -> dict[str, str]:
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


def _anomaly_layout(tree: _Tree) -> _Layout:
    _ad_check_top(tree)
    groups = _ad_train(tree)
    tests = _ad_test(tree)
    groups.update(tests)
    _require_image_suffixes(tree.files)
    masks = _ad_masks(tree, tests)
    return _Layout(groups=groups, masks=masks)


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


def _probe(root: Path, rel: str) -> _Probe | str:
    """Hash and fully decode one file; return its probe, or the user-facing error message."""
    path = root / rel
    try:
        digest, size = hash_file(path)
    except OSError as exc:
        return f"{rel} could not be read ({exc.strerror or exc}); remove or replace it"
    try:
        with Image.open(path) as img:
            img.load()
            dims, mode = img.size, img.mode
    except Exception as exc:  # any decoder failure (bomb, truncation, garbage) is the file's
        return f"{rel} is not a readable image ({_decode_reason(exc, path)}); remove or replace it"
    return _Probe(FileEntry(relpath=rel, sha256=digest, size=size), dims, mode)


def _probe_all(root: Path, rels: list[str]) -> dict[str, _Probe]:
    """Probe `rels` on a thread pool (Pillow releases the GIL while decoding).

    Raises:
        DatasetInvalid: for the first bad file in `rels` order; later work is cancelled.
    """
    workers = min(8, os.cpu_count() or 1)
    probes: dict[str, _Probe] = {}
    with _strict_decoding(), ThreadPoolExecutor(workers, "modelfab-scan") as pool:
        try:
            for rel, result in zip(rels, pool.map(lambda r: _probe(root, r), rels), strict=True):
                if isinstance(result, str):
                    raise DatasetInvalid(result, param=rel)
                probes[rel] = result
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return probes


def _check_mask_sizes(masks: dict[str, str], probes: dict[str, _Probe]) -> None:
    for mask, image in sorted(masks.items()):
        mask_dims, image_dims = probes[mask].dims, probes[image].dims
        if mask_dims != image_dims:
            raise DatasetInvalid(
                f"{mask} is {mask_dims[0]}x{mask_dims[1]} but its image {image} is "
                f"{image_dims[0]}x{image_dims[1]}; a mask must have its image's size",
                param=mask,
            )


# --------------------------------------------------------------------------- stats


def _size_stats(dims: list[tuple[int, int]]) -> dict[str, Any]:
    """min / max by pixel area (ties by width, height); most common with ties to the smaller."""
    counts = Counter(dims)
    by_area = sorted(counts, key=lambda d: (d[0] * d[1], d))
    common, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"min": list(by_area[0]), "max": list(by_area[-1]), "most_common": [list(common), n]}


def _image_stats(task: str, layout: _Layout, probes: dict[str, _Probe]) -> dict[str, Any]:
    images = [probes[rel] for rels in layout.groups.values() for rel in rels]
    stats: dict[str, Any] = {"task": task, "num_images": len(images)}
    counts = {folder: len(rels) for folder, rels in sorted(layout.groups.items())}
    if task == "image-classification":
        stats["classes"] = counts
    else:
        stats["splits"] = counts
        stats["defect_types"] = sorted(
            f.removeprefix("test/") for f in counts if f.startswith("test/") and f != "test/good"
        )
        stats["num_masks"] = len(layout.masks)
    stats["image_sizes"] = _size_stats([p.dims for p in images])
    stats["modes"] = dict(sorted(Counter(p.mode for p in images).items()))
    return stats


# --------------------------------------------------------------------------- entry point


def scan_dataset(root: Path, task: str) -> DatasetScan:
    """Validate the dataset folder `root` for `task` and compute its content address.

    Reads and fully decodes every image (blocking; CPU and disk bound). Structural
    problems are reported before content problems; among bad files, the first in sorted
    relpath order is reported.

    Raises:
        InvalidRequest: (param "task") for an unknown task.
        DatasetInvalid: with `param` the offending file or folder relative to `root`
            ("." for the root itself) and a message that says what to do.
    """
    check_task(task)
    if not root.is_dir():
        raise DatasetInvalid("the dataset is not a folder; upload a folder or archive", param=".")
    tree = _walk(root)
    if not tree.files:
        raise DatasetInvalid(
            "the dataset is empty; add images in the layout of its task", param="."
        )
    if task == "image-classification":
        layout = _classification_layout(tree)
    else:
        layout = _anomaly_layout(tree)
    probes = _probe_all(root, tree.files)
    _check_mask_sizes(layout.masks, probes)
    files = tuple(probes[rel].entry for rel in tree.files)
    scan = DatasetScan(
        task=task,
        files=files,
        stats=_image_stats(task, layout, probes),
        sha256=content_address(files),
    )
    logger.info("scanned %s dataset %s: %d files", task, scan.sha256[:12], len(files))
    return scan
