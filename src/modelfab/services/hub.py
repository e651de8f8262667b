"""The hub as tenants see it: which foundation models are usable here, and importing the
weights of one (admin only: imported weights serve every tenant).

The control plane has no torch, so an import only checks the file is non-empty and at
most 2 GiB and records its sha256; loading it as a state dict is checked by the first job
that uses it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from modelfab.artifacts import hash_path
from modelfab.db.engine import transaction
from modelfab.errors import Forbidden, InvalidRequest, PayloadTooLarge
from modelfab.hub.catalog import CATALOG, HubEntry, availability, get_entry, store_imported
from modelfab.ids import now
from modelfab.schemas.hub import HubModel, HubModelImported, ImportedWeights
from modelfab.services import idempotency
from modelfab.services.common import Principal
from modelfab.services.idempotency import Idempotency

logger = logging.getLogger(__name__)

MAX_IMPORT_BYTES = 2 * 2**30
IMPORTABLE = ("import", "package")


def _entry_view(entry: HubEntry, hub_dir: Path) -> HubModel:
    available, how = availability(entry, hub_dir)
    return HubModel(
        id=entry.id,
        task=entry.task,
        arch=entry.arch,
        source=entry.source,
        licence=entry.licence,
        params_m=entry.params_m,
        input_size=entry.input_size,
        description=entry.description,
        available=available,
        how=how,
    )


def list_models(hub_dir: Path) -> list[HubModel]:
    """Every catalog entry, with whether it is usable offline here and how (or what to run)."""
    return [_entry_view(e, hub_dir) for e in CATALOG]


def check_import(principal: Principal, model_id: str) -> HubEntry:
    """The entry `model_id` if `principal` may import weights for it; call it before reading
    an upload. Raises Forbidden for non-admins, NotFound for an unknown id, InvalidRequest
    for a model that takes no weights."""
    if not principal.is_admin:
        raise Forbidden(
            "only admins may import hub weights: every tenant's jobs would use them",
            param="model_id",
        )
    entry = get_entry(model_id)
    if entry.source not in IMPORTABLE:
        raise InvalidRequest(
            f"{model_id} is a {entry.source} model and takes no imported weights",
            param="model_id",
        )
    return entry


def import_weights(
    principal: Principal,
    hub_dir: Path,
    model_id: str,
    upload_path: Path,
    *,
    factory: sessionmaker[Session],
    original_filename: str | None = None,
    idem: Idempotency | None = None,
) -> HubModelImported:
    """Keep `upload_path` as the weights of `model_id`, replacing earlier ones (blocks).
    A repeat with `idem` (same file name and bytes) answers as the first time, storing
    nothing; the answer is recorded once the weights are in place.

    Raises what `check_import` raises, InvalidRequest for an empty file, PayloadTooLarge
    past 2 GiB, Conflict for an `idem` key used with another file.
    """
    entry = check_import(principal, model_id)
    size = upload_path.stat().st_size
    if size == 0:
        raise InvalidRequest("the weights file is empty", param="file")
    if size > MAX_IMPORT_BYTES:
        raise PayloadTooLarge(f"weights are larger than {MAX_IMPORT_BYTES} bytes", param="file")
    filename = original_filename or upload_path.name
    if idem is not None:
        digest, _ = hash_path(upload_path)
        idem = idem.for_body({"filename": filename, "file_sha256": digest})
        with factory() as session:
            if (first := idempotency.replay(session, idem, HubModelImported)) is not None:
                return first
    meta = store_imported(hub_dir, model_id, upload_path, original_filename=filename, at=now())
    logger.info("imported weights for %s (sha256 %s)", model_id, meta["sha256"][:12])
    view = _entry_view(entry, hub_dir).model_dump()
    out = HubModelImported(**view, imported=ImportedWeights.model_validate(meta))
    with transaction(factory) as session:
        idempotency.record(session, idem, 201, out)
    return out
