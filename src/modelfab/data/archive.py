"""Safe extraction of uploaded dataset archives (zip, tar, tar.gz).

Nothing an archive holds may land outside the destination: absolute member paths, '..'
components, symbolic links and device or fifo members are refused before anything is
written. Tar members go through tarfile's "data" filter as a second line of defence.
"""

from __future__ import annotations

import errno
import gzip
import logging
import lzma
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from modelfab.data.validate import is_ignored
from modelfab.errors import DatasetInvalid, InvalidRequest, PayloadTooLarge

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
"""Upload names the API accepts as archives; extraction itself sniffs the content."""

MAX_NAME_BYTES = 255
"""Longest file or folder name (UTF-8 bytes) a member path may have: what filesystems take."""
MAX_PATH_BYTES = 1024
"""Longest member path (UTF-8 bytes)."""

DEFAULT_MAX_EXTRACT_BYTES = 20 * 2**30
DEFAULT_MAX_MEMBERS = 1_000_000
DEFAULT_MAX_RATIO = 100.0
"""Most unpacked bytes per packed byte; images barely compress, zeros do ~1000-fold."""
DEFAULT_RATIO_FLOOR_BYTES = 64 * 2**20
"""Unpacked bytes always allowed whatever the ratio, so small text-like datasets pass."""

_CHUNK_BYTES = 2**20
_SERVER_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DRIVE = re.compile(r"^[A-Za-z]:")
_FORMAT_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    zipfile.BadZipFile,
    gzip.BadGzipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,  # zip compression method Python cannot read
    NotADirectoryError,  # a member is both a file and a folder
    IsADirectoryError,
    FileExistsError,
)


@dataclass
class _Budget:
    """Running totals against the caller's limits; `label` names the archive in errors."""

    label: str
    max_bytes: int
    max_files: int
    ratio_bytes: int
    """The compression-ratio cap in bytes: max(ratio * packed size, floor)."""
    max_ratio: float
    bytes: int = 0
    """Declared sizes of the members seen so far."""
    written: int = 0
    """Bytes actually written (zip members; tarfile writes exactly the declared size)."""
    files: int = 0

    def add(self, size: int) -> None:
        """Count one member declaring `size` bytes, before it is written. Raises
        PayloadTooLarge past a limit."""
        self.files += 1
        if self.files > self.max_files:
            raise PayloadTooLarge(
                f"archive {self.label!r} holds more than {self.max_files} entries, the "
                "limit here; split the dataset",
                param="file",
            )
        self.bytes += size
        self._check(self.bytes)

    def wrote(self, size: int) -> None:
        """Count `size` bytes written. Raises PayloadTooLarge past `max_bytes`."""
        self.written += size
        self._check(self.written)

    def _check(self, total: int) -> None:
        if total > self.max_bytes:
            raise PayloadTooLarge(
                f"archive {self.label!r} unpacks to more than {self.max_bytes} bytes, the "
                "limit here; upload a smaller dataset",
                param="file",
            )
        if total > self.ratio_bytes:
            raise PayloadTooLarge(
                f"archive {self.label!r} unpacks to more than {self.ratio_bytes} bytes, over "
                f"{self.max_ratio:g} times its packed size (the compression-ratio cap, refused "
                "as a likely archive bomb); upload it uncompressed or ask an admin to raise "
                "MODELFAB_MAX_EXTRACT_RATIO",
                param="file",
            )


def _safe_relpath(name: str) -> str:
    """The member's normalised POSIX path ("" for the root itself).

    Backslashes count as separators, so that Windows-made archives are judged strictly.

    Raises:
        InvalidRequest: (param "file") for absolute paths and '..' components.
    """
    norm = name.replace("\\", "/")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if norm.startswith("/") or _DRIVE.match(norm) or ".." in parts:
        raise InvalidRequest(
            f"archive member {name!r} points outside the archive (absolute path or '..'); "
            "re-create the archive from inside the dataset folder",
            param="file",
        )
    too_long = [p for p in parts if len(p.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES]
    if too_long or len(norm.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise DatasetInvalid(
            f"archive member {name[:80]!r}... has a name longer than {MAX_NAME_BYTES} bytes "
            f"or a path longer than {MAX_PATH_BYTES} bytes; shorten it and re-create the "
            "archive",
            param="file",
        )
    return "/".join(parts)


def _refuse_member(name: str, kind: str) -> InvalidRequest:
    return InvalidRequest(
        f"archive member {name!r} is a {kind}; datasets hold regular files and folders only: "
        "replace it with the file itself or leave it out",
        param="file",
    )


def _tar_members(tf: tarfile.TarFile, budget: _Budget) -> Iterator[tarfile.TarInfo]:
    """Yield members lazily, refusing unsafe ones before tarfile extracts them."""
    for member in tf:
        _safe_relpath(member.name)
        if member.issym():
            raise _refuse_member(member.name, "symbolic link")
        if not (member.isfile() or member.isdir() or member.islnk()):
            raise _refuse_member(member.name, "device, fifo or other special file")
        budget.add(member.size if member.isfile() else 0)
        yield member


def _extract_tar(archive: Path, dest: Path, budget: _Budget) -> None:
    with tarfile.open(archive, "r:*") as tf:
        # "data" re-checks every path and hard-link target stays inside dest.
        tf.extractall(dest, members=_tar_members(tf, budget), filter="data")


def _zip_plan(zf: zipfile.ZipFile, budget: _Budget) -> list[tuple[zipfile.ZipInfo, str]]:
    """Check every member before anything is written; return (member, relpath) pairs."""
    plan: list[tuple[zipfile.ZipInfo, str]] = []
    for info in zf.infolist():
        rel = _safe_relpath(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise _refuse_member(info.filename, "symbolic link")
        if info.flag_bits & 0x1:
            raise InvalidRequest(
                f"archive member {info.filename!r} is encrypted; upload an archive "
                "without a password",
                param="file",
            )
        budget.add(0 if info.is_dir() else info.file_size)
        if rel:
            plan.append((info, rel))
    return plan


def _extract_zip(archive: Path, dest: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info, rel in _zip_plan(zf, budget):
            target = dest.joinpath(*rel.split("/"))
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as out:
                _copy_counted(src, out, budget)


def _copy_counted(src: IO[bytes], out: IO[bytes], budget: _Budget) -> None:
    """Copy while counting what is written: declared sizes were counted before anything
    was written, but a zip's can lie, so the real bytes are held to the cap too."""
    while chunk := src.read(_CHUNK_BYTES):
        budget.wrote(len(chunk))
        out.write(chunk)


def _clear(dest: Path) -> None:
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def is_archive(path: Path) -> bool:
    """Whether the file `path` holds a zip or a tar archive (plain or gz/bz2/xz), judged by
    its content, as `extract_archive` judges it. Blocks while reading its head."""
    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def dataset_root(dest: Path) -> Path:
    """The dataset root inside an extracted archive.

    That is the only top-level directory when there is exactly one (ignoring hidden
    entries, `__MACOSX` and `Thumbs.db`), unless it is named `train` (then `dest` is an
    anomaly-detection root holding train/ alone); otherwise `dest`.
    """
    entries = [p for p in dest.iterdir() if not is_ignored(p.name)]
    if len(entries) == 1:
        only = entries[0]
        if only.is_dir() and not only.is_symlink() and only.name != "train":
            return only
    return dest


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
    max_files: int = DEFAULT_MAX_MEMBERS,
    max_ratio: float = DEFAULT_MAX_RATIO,
    ratio_floor_bytes: int = DEFAULT_RATIO_FLOOR_BYTES,
    label: str | None = None,
) -> Path:
    """Extract `archive` (zip, or tar optionally gz/bz2/xz-compressed) into `dest`.

    `dest` is created if missing and must be empty. The format is sniffed from the
    content, not the name. Blocks for the whole extraction. Sizes are counted before each
    member is written and again as its bytes are written, so a bomb stops at the cap:
    `max_bytes`, or `max_ratio` times the archive's own size (at least `ratio_floor_bytes`)
    when that is less. On any error `dest` is emptied again, so nothing half-extracted
    remains. `label` names the archive in messages (the upload's file name; `archive`'s own
    name by default).

    Returns:
        The dataset root (see `dataset_root`).

    Raises:
        InvalidRequest: (param "file") for a corrupt, unsupported or unsafe archive, or a
            member the filesystem refuses; DatasetInvalid for a member name over
            MAX_NAME_BYTES or a path over MAX_PATH_BYTES.
        OSError: when the server's disk is full (ENOSPC, EDQUOT): not the caller's fault.
        PayloadTooLarge: (param "file") past `max_bytes` uncompressed, past the
            compression-ratio cap, or past `max_files` entries.
        ValueError: when `dest` is not empty (a caller bug).
    """
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"extraction destination {dest} is not empty")
    budget = _Budget(
        label=label or archive.name,
        max_bytes=max_bytes,
        max_files=max_files,
        ratio_bytes=max(int(max_ratio * archive.stat().st_size), ratio_floor_bytes),
        max_ratio=max_ratio,
    )
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest, budget)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, dest, budget)
        else:
            raise InvalidRequest(
                "the upload is not a zip or tar archive; upload a .zip, .tar, .tar.gz or .tgz",
                param="file",
            )
    except _FORMAT_ERRORS as exc:
        _clear(dest)
        reason = str(exc).replace(str(dest), "<dest>").replace(str(archive), archive.name)
        raise InvalidRequest(
            f"the archive is corrupt or unsupported ({reason}); re-create it and upload again",
            param="file",
        ) from exc
    except OSError as exc:
        _clear(dest)
        if exc.errno in _SERVER_ERRNOS:
            raise
        raise InvalidRequest(
            f"a member of archive {budget.label!r} could not be written ({exc.strerror}); "
            "check its names and re-create the archive",
            param="file",
        ) from exc
    except BaseException:
        _clear(dest)
        raise
    logger.info("extracted %s: %d entries, %d bytes", budget.label, budget.files, budget.bytes)
    return dataset_root(dest)
