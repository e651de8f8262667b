"""Importing a chat model under a new name: a GGUF file, or a Hugging Face folder sent as
an archive, checked without torch and stored as `<hub_dir>/<name>/` (see `hub.chat`).

The model's folder is staged in `<hub_dir>/.tmp-import-*` and published by one rename, so
`<hub_dir>/<name>/meta.json` exists only for a complete import. The same content imported
again under the same name answers the stored import (a retried upload is harmless); other
content under a taken name is refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import zipfile
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modelfab.artifacts import hash_path
from modelfab.data.archive import (
    DEFAULT_MAX_EXTRACT_BYTES,
    DEFAULT_MAX_MEMBERS,
    dataset_root,
    extract_archive,
)
from modelfab.errors import ChatModelInvalid, Conflict
from modelfab.hub.catalog import CHAT, META_NAME
from modelfab.hub.chat import MODEL_DIR, SOURCE_GGUF, TOKENIZER_DIR, imported_chat_meta
from modelfab.llm.gguf import gguf_tokenizer, is_gguf, read_gguf
from modelfab.llm.hf_folder import check_hf_folder
from modelfab.llm.publish import STAGING_PREFIX
from modelfab.llm.tokenizer import ChatTokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatImport:
    """The stored import's `meta.json`, and whether this call stored it."""

    meta: dict[str, Any]
    created: bool


def import_chat_model(
    hub_dir: Path,
    name: str,
    upload: Path,
    *,
    original_filename: str,
    at: float,
    max_extract_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> ChatImport:
    """Check `upload` (a GGUF file, or a zip/tar of a Hugging Face folder) and store it as
    chat model `name`. The upload file may be moved. Blocks (hashing, extracting, and for a
    GGUF a few seconds building its tokenizer).

    Raises:
        ChatModelInvalid: (param "file") the upload is neither, or the model is unusable
            (see `check_hf_folder`, `read_gguf`, `gguf_tokenizer`).
        InvalidRequest, PayloadTooLarge: a bad or oversized archive (`extract_archive`).
        Conflict: `name` holds another import (code "hub_name_taken").
    """
    hub_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}import-", dir=hub_dir))
    try:
        staging.chmod(0o755)
        if is_gguf(upload):
            meta = _stage_gguf(staging, upload)
        elif zipfile.is_zipfile(upload) or tarfile.is_tarfile(upload):
            meta = _stage_folder(staging, upload, original_filename, max_extract_bytes, max_members)
        else:
            raise ChatModelInvalid(
                f"{original_filename} is neither a GGUF file nor an archive (.tar, .tar.gz, "
                ".zip) of a Hugging Face model folder; send one of those",
                param="file",
            )
        meta.update(id=name, task=CHAT, imported_at=at, original_filename=original_filename)
        earlier = imported_chat_meta(hub_dir, name)
        if earlier is not None:
            return _same_or_conflict(earlier, meta)
        _write_json(staging / META_NAME, meta)
        return _publish(hub_dir, name, staging, meta)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage_gguf(staging: Path, upload: Path) -> dict[str, Any]:
    info = read_gguf(upload)
    tokenizer = gguf_tokenizer(info)
    sha256, size = hash_path(upload)
    _save_tokenizer(staging, tokenizer, info.context_length)
    shutil.move(upload, staging / SOURCE_GGUF)
    return {
        "format": "gguf",
        "sha256": sha256,
        "size": size,
        "arch": info.architecture,
        "context_length": info.context_length,
        "params_m": round(info.parameters / 1e6, 1),
    }


def _stage_folder(
    staging: Path, upload: Path, filename: str, max_bytes: int, max_members: int
) -> dict[str, Any]:
    unpacked = staging / "unpacked"
    root = dataset_root(
        extract_archive(
            upload, unpacked, max_bytes=max_bytes, max_files=max_members, label=filename
        )
    )
    info = check_hf_folder(root)
    sha256, size = _tree_digest(root)
    _save_tokenizer(staging, info.tokenizer, info.context_length)
    os.rename(root, staging / MODEL_DIR)
    shutil.rmtree(unpacked, ignore_errors=True)  # what held the folder, if it had a top one
    return {
        "format": "hf",
        "sha256": sha256,
        "size": size,
        "arch": info.arch,
        "context_length": info.context_length,
        "params_m": round(info.parameters / 1e6, 1),
    }


def _save_tokenizer(staging: Path, tokenizer: ChatTokenizer, context: int | None) -> None:
    """The tokenizer folder the control plane counts with; its model_max_length is the
    model's context length (tokenizer configs often hold a placeholder there)."""
    limit = context or tokenizer.model_max_length
    replace(tokenizer, model_max_length=limit).save(staging / TOKENIZER_DIR)


def _tree_digest(root: Path) -> tuple[str, int]:
    """(sha256 over each file's relative path and sha256, in path order; total bytes)."""
    digest = hashlib.sha256()
    total = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        sha, size = hash_path(path)
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha}\n".encode())
        total += size
    return digest.hexdigest(), total


def _same_or_conflict(earlier: dict[str, Any], meta: dict[str, Any]) -> ChatImport:
    if earlier.get("sha256") == meta["sha256"]:
        return ChatImport(earlier, created=False)
    raise Conflict(
        f"hub model {meta['id']!r} was imported from other content "
        f"({earlier.get('original_filename')}, sha256 {str(earlier.get('sha256'))[:12]}); "
        "import this one under another name",
        param="model_id",
        code="hub_name_taken",
    )


def _publish(hub_dir: Path, name: str, staging: Path, meta: dict[str, Any]) -> ChatImport:
    """Rename `staging` to `<hub_dir>/<name>`; a folder there without an import record (a
    leftover) is replaced, and a concurrent import that got there first decides."""
    dest = hub_dir / name
    if dest.exists():
        aside = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}old-", dir=hub_dir))
        with suppress(FileNotFoundError):
            os.rename(dest, aside / name)
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.rename(staging, dest)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        earlier = imported_chat_meta(hub_dir, name)
        if earlier is None:
            raise
        return _same_or_conflict(earlier, meta)
    logger.info("imported chat model %s (%s, sha256 %s)", name, meta["format"], meta["sha256"][:12])
    return ChatImport(meta, created=True)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
