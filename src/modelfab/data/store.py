"""The content-addressed dataset store: one immutable folder per dataset sha256.

Layout: `<root>/<sha256>/` holds the dataset's files at their relpaths plus
`.modelfab-dataset.json` (task, sha256, stats, file_count, size_bytes). A copy is staged
in `<root>/.tmp-<random>/` and published by one `os.rename`, so `<root>/<sha256>` is
either absent or complete, across threads and processes alike.

A process killed mid-ingest leaves its `.tmp-*` folder behind; `sweep_staging` removes
such leftovers once nothing in them has been written for a grace period, so a copy in
progress (in this process or another sharing the store) is never touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfab.artifacts import CHUNK_BYTES, hash_path
from modelfab.data.validate import (
    DatasetKind,
    DatasetScan,
    FileEntry,
    content_address,
    scan_dataset,
)
from modelfab.errors import DatasetInvalid, ModelfabError, NotFound

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".tmp-"
"""Names of staging entries: datasets being copied here, artifacts being hashed."""

METADATA_NAME = ".modelfab-dataset.json"
"""Metadata file inside each stored copy; hidden, so scans of the copy ignore it."""

_SHA256 = re.compile(r"[0-9a-f]{64}")
_WORKERS = min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class StoredDataset:
    """A dataset as kept in the store."""

    sha256: str
    path: Path
    """Where the immutable copy lives: `<store root>/<sha256>`."""
    stats: dict[str, Any]
    file_count: int
    size_bytes: int


def _copy_verified(src_root: Path, dst_root: Path, entry: FileEntry) -> None:
    """Copy one file, hashing on the way, so the copy is exactly what was validated.

    Raises:
        DatasetInvalid: when the source changed since it was scanned.
    """
    dst = dst_root.joinpath(*entry.relpath.split("/"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with (src_root / entry.relpath).open("rb") as src, dst.open("wb") as out:
        while chunk := src.read(CHUNK_BYTES):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != entry.sha256:
        raise DatasetInvalid(
            f"{entry.relpath} changed while the dataset was being stored; "
            "leave the files alone until the upload finishes and try again",
            param=entry.relpath,
        )


def _metadata(scan: DatasetScan) -> dict[str, Any]:
    return {
        "task": scan.task,
        "sha256": scan.sha256,
        "stats": scan.stats,
        "file_count": len(scan.files),
        "size_bytes": sum(f.size for f in scan.files),
    }


def _corrupt(sha256: str, why: str) -> ModelfabError:
    return ModelfabError(
        f"stored dataset {sha256} is corrupt ({why}); ingest it again from its source",
        param="sha256",
        code="dataset_corrupt",
    )


class DatasetStore:
    """Immutable dataset copies under `root`, keyed by their content sha256.

    Safe for concurrent use by threads and processes sharing `root` (one filesystem).
    """

    def __init__(self, root: Path) -> None:
        """Use `root` as the store, creating it if missing."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def ingest(self, src: Path, task: DatasetKind) -> StoredDataset:
        """Validate the folder `src` as `task` (a `modelfab.tasks.TaskSpec`) says and keep
        an immutable copy of it.

        Blocks while scanning and copying. Copies nothing when the same content is
        already stored. Only the files of the scan are copied (ignored files are not).

        Raises:
            DatasetInvalid: as `scan_dataset` does, or when a source
                file changes during the copy.
        """
        scan = scan_dataset(src, task)
        final = self.root / scan.sha256
        if final.is_dir():
            logger.info("dataset %s already stored", scan.sha256[:12])
        else:
            self._publish(self._stage(src, scan), final)
        return StoredDataset(
            sha256=scan.sha256,
            path=final,
            stats=scan.stats,
            file_count=len(scan.files),
            size_bytes=sum(f.size for f in scan.files),
        )

    def _stage(self, src: Path, scan: DatasetScan) -> Path:
        """Copy the scanned files and the metadata into a fresh temp folder of the store."""
        tmp = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
        try:
            with ThreadPoolExecutor(_WORKERS, "modelfab-store") as pool:
                list(pool.map(lambda e: _copy_verified(src, tmp, e), scan.files))
            (tmp / METADATA_NAME).write_text(json.dumps(_metadata(scan), indent=2) + "\n")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp

    def _publish(self, tmp: Path, final: Path) -> None:
        """Atomically move `tmp` to `final`; when another ingest got there first, keep theirs."""
        try:
            os.rename(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not final.is_dir():
                raise
            logger.info("dataset %s was stored concurrently; reusing it", final.name[:12])
        else:
            logger.info("stored dataset %s", final.name[:12])

    def sweep(self, older_than_s: float) -> list[Path]:
        """Remove what killed ingests left (see `sweep_staging`); returns what went."""
        return sweep_staging(self.root, older_than_s)

    def path_for(self, sha256: str) -> Path:
        """The folder of a stored dataset. Raises NotFound (param "sha256") if absent."""
        path = self.root / sha256
        if not _SHA256.fullmatch(sha256) or not path.is_dir():
            raise NotFound(
                f"dataset {sha256[:80]!r} is not in the store; ingest it first",
                param="sha256",
            )
        return path

    def get(self, sha256: str) -> StoredDataset:
        """The stored dataset as recorded in its metadata. Raises NotFound if absent."""
        path = self.path_for(sha256)
        try:
            meta = json.loads((path / METADATA_NAME).read_text())
        except (OSError, ValueError) as exc:
            raise _corrupt(sha256, f"unreadable {METADATA_NAME}") from exc
        return StoredDataset(
            sha256=sha256,
            path=path,
            stats=meta["stats"],
            file_count=meta["file_count"],
            size_bytes=meta["size_bytes"],
        )

    def verify(self, sha256: str) -> None:
        """Re-hash every stored file (blocking) and check the content address.

        Raises:
            NotFound: when the dataset is not stored.
            ModelfabError: code "dataset_corrupt" when files were changed, added,
                removed or replaced by links.
        """
        path = self.path_for(sha256)
        rels = _stored_files(path, sha256)
        with ThreadPoolExecutor(_WORKERS, "modelfab-verify") as pool:
            hashes = list(pool.map(lambda r: hash_path(path / r), rels))
        entries = [
            FileEntry(r, digest, size) for r, (digest, size) in zip(rels, hashes, strict=True)
        ]
        if content_address(entries) != sha256:
            raise _corrupt(sha256, "its files no longer match its sha256")


def _stored_files(path: Path, sha256: str) -> list[str]:
    """Every file of a stored copy except its metadata, as sorted relpaths.

    Raises:
        ModelfabError: code "dataset_corrupt" for symlinks or special files.
    """
    rels: list[str] = []
    for dirpath, dirnames, filenames in os.walk(path):
        base = Path(dirpath).relative_to(path).as_posix()
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            if full.is_symlink() or not (full.is_dir() or full.is_file()):
                raise _corrupt(sha256, f"{base}/{name} is not a regular file")
        rels.extend(name if base == "." else f"{base}/{name}" for name in filenames)
    return sorted(r for r in rels if r != METADATA_NAME)


def sweep_staging(
    root: Path, older_than_s: float, *, pattern: str = f"{STAGING_PREFIX}*"
) -> list[Path]:
    """Remove the entries of `root` named like `pattern` (files or whole folders) in which
    nothing was modified for `older_than_s` seconds: leftovers of a process killed while
    staging. Returns the paths removed; a missing `root` has none.

    An entry is judged by the newest mtime of anything in it, so a staging folder being
    written to (by any process) survives; `older_than_s` must exceed the longest pause
    between two writes of one staging step. Blocks while walking and removing. Errors
    removing one entry are logged and the sweep goes on.
    """
    cutoff = time.time() - older_than_s
    removed: list[Path] = []
    for path in sorted(root.glob(pattern)) if root.is_dir() else []:
        try:
            if _modified_since(path, cutoff):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # its owner finished (or another sweep got there) meanwhile
        except OSError as exc:
            logger.warning("could not remove staging leftover %s: %s", path, exc)
            continue
        removed.append(path)
    if removed:
        logger.info("removed %d staging leftovers from %s", len(removed), root)
    return removed


def _modified_since(path: Path, cutoff: float) -> bool:
    """Whether `path` or anything under it (links not followed) has an mtime after
    `cutoff`; stops at the first such entry."""
    if path.lstat().st_mtime > cutoff:
        return True
    if not path.is_dir() or path.is_symlink():
        return False
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                if os.lstat(os.path.join(dirpath, name)).st_mtime > cutoff:
                    return True
            except FileNotFoundError:
                return True  # something is changing in there
    return False
