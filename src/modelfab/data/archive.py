"""Safe extraction of uploaded dataset archives (zip, tar, tar.gz).

Nothing an archive holds may land outside the destination: absolute member paths, '..'
components, symbolic links and device or fifo members are refused before anything is
written. Tar members go through tarfile's "data" filter as a second line of defence.
"""

from __future__ import annotations

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

from modelfab.data.validate import is_ignored
from modelfab.errors import InvalidRequest, PayloadTooLarge

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
"""Upload names the API accepts as archives; extraction itself sniffs the content."""

_CHUNK_BYTES = 2**20
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
    """Running totals against the caller's limits."""

    max_bytes: int
    max_files: int
    bytes: int = 0
    files: int = 0

    def add(self, size: int) -> None:
        """Count one member of `size` bytes. Raises PayloadTooLarge past a limit."""
        self.files += 1
        self.bytes += size
        if self.files > self.max_files:
            raise PayloadTooLarge(
                f"the archive holds more than {self.max_files} entries; split the dataset",
                param="file",
            )
        if self.bytes > self.max_bytes:
            raise PayloadTooLarge(
                f"the archive unpacks to more than {self.max_bytes} bytes; "
                "upload a smaller dataset",
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
            # ZipExtFile stops at the declared file_size and checks the CRC at the end.
            with zf.open(info) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, _CHUNK_BYTES)


def _clear(dest: Path) -> None:
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


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
    max_bytes: int = 20 * 2**30,
    max_files: int = 1_000_000,
) -> Path:
    """Extract `archive` (zip, or tar optionally gz/bz2/xz-compressed) into `dest`.

    `dest` is created if missing and must be empty. The format is sniffed from the
    content, not the name. Blocks for the whole extraction. On any error `dest` is
    emptied again, so nothing half-extracted remains.

    Returns:
        The dataset root (see `dataset_root`).

    Raises:
        InvalidRequest: (param "file") for a corrupt, unsupported or unsafe archive.
        PayloadTooLarge: (param "file") past `max_bytes` uncompressed or `max_files` entries.
        ValueError: when `dest` is not empty (a caller bug).
    """
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"extraction destination {dest} is not empty")
    budget = _Budget(max_bytes=max_bytes, max_files=max_files)
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
    except BaseException:
        _clear(dest)
        raise
    logger.info("extracted %s: %d entries, %d bytes", archive.name, budget.files, budget.bytes)
    return dataset_root(dest)
