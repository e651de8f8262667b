"""The hub as tenants see it: which foundation models are usable here, and importing one
(admin only: an import serves every tenant).

Vision weights go to a catalog id; the control plane has no torch, so that import only
checks the file is non-empty and at most 2 GiB and records its sha256 (the first job that
uses it loads it). Chat models are imported under a new name with `task=chat`: a GGUF file
or a Hugging Face folder (an archive), checked without torch (config, safetensors headers,
tokenizer, chat template; `modelfab.hub.chat_import`); their weights are converted or
loaded by the first worker that needs them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from modelfab.artifacts import hash_path
from modelfab.data.archive import DEFAULT_MAX_EXTRACT_BYTES, DEFAULT_MAX_MEMBERS
from modelfab.db.engine import transaction
from modelfab.errors import Conflict, Forbidden, InvalidRequest, NotFound, PayloadTooLarge
from modelfab.hub.catalog import (
    CATALOG,
    CATALOG_IDS,
    CHAT,
    CHAT_CATALOG,
    EMBEDDING_CATALOG,
    ChatEntry,
    EmbeddingEntry,
    HubEntry,
    availability,
    get_entry,
    store_imported,
)
from modelfab.hub.chat import chat_availability, chat_entries, imported_chat_meta, imported_entry
from modelfab.hub.chat_import import import_chat_model
from modelfab.hub.embeddings import embedding_availability
from modelfab.ids import now
from modelfab.schemas.hub import HubModel, HubModelImported, ImportedWeights
from modelfab.services import idempotency
from modelfab.services.common import Principal, check_name
from modelfab.services.idempotency import Idempotency

logger = logging.getLogger(__name__)

MAX_IMPORT_BYTES = 2 * 2**30
"""Largest vision weights file."""
IMPORTABLE = ("import", "package")
_CHAT_IDS = frozenset(e.id for e in CHAT_CATALOG)
_CATALOG_TASKS = {
    **{e.id: e.task for e in CATALOG},
    **{e.id: e.task for e in CHAT_CATALOG},
    **{e.id: e.task for e in EMBEDDING_CATALOG},
}


@dataclass(frozen=True)
class ImportPlan:
    """What an import request will do, known before its body is read."""

    model_id: str
    task: str
    max_bytes: int
    """The largest upload it takes."""


def _entry_view(entry: HubEntry, hub_dir: Path) -> HubModel:
    return _view(entry, availability(entry, hub_dir), input_size=entry.input_size)


def _chat_view(entry: ChatEntry, hub_dir: Path) -> HubModel:
    return _view(
        entry, chat_availability(entry, hub_dir), context_length=entry.context_length or None
    )


def _embedding_view(entry: EmbeddingEntry) -> HubModel:
    return _view(entry, embedding_availability(entry), context_length=entry.max_tokens)


def _view(
    entry: HubEntry | ChatEntry | EmbeddingEntry, usable: tuple[bool, str], **shape: Any
) -> HubModel:
    """The listing of any hub entry: the fields every kind has, whether it is usable here
    (and how to make it so), and `shape`, the kind's own (input size, context length)."""
    available, how = usable
    return HubModel(
        id=entry.id,
        task=entry.task,
        arch=entry.arch,
        source=entry.source,
        licence=entry.licence,
        params_m=entry.params_m,
        description=entry.description,
        available=available,
        how=how,
        **shape,
    )


def list_models(hub_dir: Path) -> list[HubModel]:
    """Every catalog entry, then the imported chat models, then the embeddings models, each
    with whether it is usable offline here and how (or what to run)."""
    return [
        *(_entry_view(e, hub_dir) for e in CATALOG),
        *(_chat_view(e, hub_dir) for e in chat_entries(hub_dir)),
        *(_embedding_view(e) for e in EMBEDDING_CATALOG),
    ]


def check_import(
    principal: Principal, model_id: str, task: str | None = None, *, max_chat_bytes: int
) -> ImportPlan:
    """What importing into `model_id` will do, if `principal` may; call it before reading an
    upload. Without `task` (or with the entry's own task), weights for a vision catalog
    entry; with task "chat", a chat model under a new name (at most `max_chat_bytes`).

    Raises Forbidden for non-admins; NotFound for an unknown id without task "chat";
    InvalidRequest for a model that takes no weights, a task that cannot be imported, or a
    name that is not a slug; Conflict (hub_name_taken) for a chat import onto a catalog id.
    """
    if not principal.is_admin:
        raise Forbidden(
            "only admins may import hub models: every tenant's jobs would use them",
            param="model_id",
        )
    if task == CHAT:
        return _check_chat_name(model_id, max_chat_bytes)
    if model_id in _CHAT_IDS:
        raise InvalidRequest(
            f"{model_id} is a chat model of the catalog and takes no imported weights; import "
            "another chat model under a new name with task chat (--task chat)",
            param="model_id",
        )
    try:
        entry = get_entry(model_id)
    except NotFound as exc:
        raise NotFound(
            f"{exc.message}; to import a chat model under a new name, pass task chat "
            "(modelfab hub import NAME PATH --task chat)",
            param="model_id",
        ) from exc
    if task is not None and task != entry.task:
        raise InvalidRequest(
            f"task {task!r} cannot be imported: {model_id} is an {entry.task} model, and "
            f"only chat models take new names (task {CHAT})",
            param="task",
        )
    if entry.source not in IMPORTABLE:
        raise InvalidRequest(
            f"{model_id} is a {entry.source} model and takes no imported weights",
            param="model_id",
        )
    return ImportPlan(model_id=model_id, task=entry.task, max_bytes=MAX_IMPORT_BYTES)


def _check_chat_name(model_id: str, max_bytes: int) -> ImportPlan:
    check_name(model_id, "model_id")
    if model_id in CATALOG_IDS:
        kind = _CATALOG_TASKS[model_id]
        raise Conflict(
            f"{model_id!r} is a catalog {kind} model; import the chat model under another name",
            param="model_id",
            code="hub_name_taken",
        )
    return ImportPlan(model_id=model_id, task=CHAT, max_bytes=max_bytes)


def import_model(
    principal: Principal,
    hub_dir: Path,
    plan: ImportPlan,
    upload_path: Path,
    *,
    factory: sessionmaker[Session],
    original_filename: str | None = None,
    max_extract_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
    max_archive_members: int = DEFAULT_MAX_MEMBERS,
    idem: Idempotency | None = None,
) -> HubModelImported:
    """Store the upload as `plan` says (blocks; the upload file may be moved). Vision
    weights replace earlier ones; a chat model answers `created=False` when the same
    content is already stored under its name. A repeat with `idem` (same task, file name
    and bytes) answers as the first time, storing nothing; the answer is recorded once
    the import is in place.

    Raises what `check_import` raises; InvalidRequest for an empty file; PayloadTooLarge
    past the plan's limit; Conflict for an `idem` key used with another file; for chat,
    what `import_chat_model` raises.
    """
    plan = check_import(principal, plan.model_id, plan.task, max_chat_bytes=plan.max_bytes)
    filename = original_filename or upload_path.name
    size = upload_path.stat().st_size
    if size == 0:
        raise InvalidRequest(f"the uploaded file {filename} is empty", param="file")
    if size > plan.max_bytes:
        raise PayloadTooLarge(f"the upload is larger than {plan.max_bytes} bytes", param="file")
    if idem is not None:
        digest, _ = hash_path(upload_path)
        idem = idem.for_body({"task": plan.task, "filename": filename, "file_sha256": digest})
        with factory() as session:
            if (first := idempotency.replay(session, idem, HubModelImported)) is not None:
                return first
    if plan.task == CHAT:
        out = _import_chat(
            hub_dir, plan.model_id, upload_path, filename, max_extract_bytes, max_archive_members
        )
    else:
        meta = store_imported(
            hub_dir, plan.model_id, upload_path, original_filename=filename, at=now()
        )
        logger.info("imported weights for %s (sha256 %s)", plan.model_id, meta["sha256"][:12])
        view = _entry_view(get_entry(plan.model_id), hub_dir).model_dump()
        out = HubModelImported(**view, imported=ImportedWeights.model_validate(meta))
    with transaction(factory) as session:
        idempotency.record(session, idem, 201 if out.created else 200, out)
    return out


def _import_chat(
    hub_dir: Path, name: str, upload: Path, filename: str, max_bytes: int, max_members: int
) -> HubModelImported:
    stored = import_chat_model(
        hub_dir,
        name,
        upload,
        original_filename=filename,
        at=now(),
        max_extract_bytes=max_bytes,
        max_members=max_members,
    )
    meta = imported_chat_meta(hub_dir, name) or stored.meta
    view = _chat_view(imported_entry(meta), hub_dir).model_dump()
    return HubModelImported(
        **view, imported=ImportedWeights.model_validate(meta), created=stored.created
    )
