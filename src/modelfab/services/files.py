"""The OpenAI files API: uploads kept for fine-tuning.

A `fine-tune` upload is validated as a chat dataset (converted like any chat upload) and
registered as the tenant's dataset named after the file id, in the same transaction as the
file's row; its bytes, as uploaded, go to the artifact store so that `content` answers
them unchanged. Another tenant's file answers NotFound, like a missing one.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.artifacts import ArtifactStore
from modelfab.db.engine import transaction
from modelfab.db.models import Dataset, DatasetVersion, Job, ModelVersion
from modelfab.db.models import File as FileRow
from modelfab.errors import InvalidRequest, NotFound
from modelfab.ids import now
from modelfab.schemas import files as wire
from modelfab.schemas.limits import MAX_FILENAME_CHARS, MAX_LIST_FILES
from modelfab.services import idempotency
from modelfab.services.common import Principal
from modelfab.services.datasets import DatasetService
from modelfab.services.idempotency import Idempotency
from modelfab.tasks import CHAT, get_task

logger = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def new_file_id() -> str:
    """file-<24 hex>: OpenAI's prefix, and a valid dataset name."""
    return f"file-{secrets.token_hex(12)}"


def clean_filename(name: str) -> str:
    """The upload's base name without control characters, at most MAX_FILENAME_CHARS."""
    base = _CONTROL.sub("", name.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return base[:MAX_FILENAME_CHARS] or "upload"


@dataclass(frozen=True)
class FileContent:
    """Where a file's verified bytes are, and the name it was uploaded under."""

    path: Path
    filename: str


def _view(row: FileRow) -> wire.FileObject:
    return wire.FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=int(row.created_at),
        filename=row.filename,
        purpose=row.purpose,
        status=row.status,  # type: ignore[arg-type]  # written from FileStatus only
        dataset=f"{row.id}:1" if row.dataset_version_id else None,
    )


class FileService:
    def __init__(
        self,
        factory: sessionmaker[Session],
        datasets: DatasetService,
        artifacts: ArtifactStore,
        *,
        max_bytes: int,
    ):
        """`max_bytes`: the largest file kept (the upload limit)."""
        self.factory = factory
        self.datasets = datasets
        self.artifacts = artifacts
        self.max_bytes = max_bytes

    def create(
        self,
        principal: Principal,
        *,
        upload: Path,
        filename: str,
        purpose: str,
        idem: Idempotency | None = None,
    ) -> wire.FileObject:
        """Validate and keep an uploaded file (blocks: converts, hashes, copies). Raises
        InvalidRequest (param "purpose") for a purpose other than fine-tune, DatasetInvalid
        (param: the file name) naming the line of a bad conversation; nothing is kept then.
        A repeat with `idem` (same purpose, name and bytes) answers as the first time."""
        if purpose not in wire.PURPOSES:
            raise InvalidRequest(
                f"purpose {purpose[:40]!r} is not kept here; modelfab keeps files to fine-tune "
                f"on: send purpose {wire.FINE_TUNE!r} with a chat JSONL file",
                param="purpose",
            )
        filename = clean_filename(filename)
        if idem is not None:
            with upload.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            body = {"purpose": purpose, "filename": filename, "file_sha256": digest}
            idem = idem.for_body(body)
            with self.factory() as session:
                if (first := idempotency.replay(session, idem, wire.FileObject)) is not None:
                    return first
        stored = self.datasets.ingest_upload(
            get_task(CHAT), upload, label=filename, single_file=True
        )
        with upload.open("rb") as fh:
            uri, sha256, size = self.artifacts.put_stream(fh, max_bytes=self.max_bytes)
        file_id = new_file_id()
        with transaction(self.factory) as session:
            version = self.datasets.register_in(session, principal, file_id, CHAT, stored)
            row = FileRow(
                id=file_id,
                tenant_id=principal.tenant_id,
                filename=filename,
                purpose=purpose,
                bytes=size,
                sha256=sha256,
                uri=uri,
                dataset_version_id=version.id,
                status="processed",
                created_at=now(),
            )
            session.add(row)
            session.flush()
            out = _view(row)
            idempotency.record(session, idem, 200, out)
        logger.info("file %s (%s, %d bytes) is dataset %s", file_id, filename, size, version.ref)
        return out

    def list_files(
        self,
        principal: Principal,
        *,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = MAX_LIST_FILES,
        order: str = "desc",
    ) -> wire.FileList:
        """The tenant's files by creation time (`order` asc or desc), those after the file
        `after` in that order, at most `limit`. Raises InvalidRequest (param "after") when
        `after` is not one of the tenant's files."""
        with self.factory() as session:
            stmt = select(FileRow).where(FileRow.tenant_id == principal.tenant_id)
            if purpose is not None:
                stmt = stmt.where(FileRow.purpose == purpose)
            if after is not None:
                stmt = stmt.where(self._past(session, principal, after, order))
            keys = (FileRow.created_at, FileRow.id)
            stmt = stmt.order_by(*(k.desc() if order == "desc" else k.asc() for k in keys))
            rows = list(session.scalars(stmt.limit(limit + 1)))
        page = [_view(r) for r in rows[:limit]]
        return wire.FileList(
            data=page,
            has_more=len(rows) > limit,
            first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None,
        )

    def _past(
        self, session: Session, principal: Principal, after: str, order: str
    ) -> ColumnElement[bool]:
        anchor = self._row(session, principal, after, param="after", exc=InvalidRequest)
        if order == "desc":
            return or_(
                FileRow.created_at < anchor.created_at,
                and_(FileRow.created_at == anchor.created_at, FileRow.id < anchor.id),
            )
        return or_(
            FileRow.created_at > anchor.created_at,
            and_(FileRow.created_at == anchor.created_at, FileRow.id > anchor.id),
        )

    def get(self, principal: Principal, file_id: str) -> wire.FileObject:
        """The tenant's file `file_id`. Raises NotFound (param "file_id")."""
        with self.factory() as session:
            return _view(self._row(session, principal, file_id))

    def content(self, principal: Principal, file_id: str) -> FileContent:
        """The file's bytes as uploaded, checked against their sha256 (blocks: re-hashes).
        Raises NotFound, or ArtifactCorrupt (409) when the stored copy was changed."""
        with self.factory() as session:
            row = self._row(session, principal, file_id)
            uri, sha256, filename = row.uri, row.sha256, row.filename
        return FileContent(self.artifacts.open_verified(uri, sha256), filename)

    def delete(self, principal: Principal, file_id: str) -> wire.FileDeleted:
        """Forget the tenant's file, and its dataset version unless a job or a model
        version was made from it (their lineage keeps it); the dataset goes with its last
        version. Raises NotFound (param "file_id")."""
        with transaction(self.factory) as session:
            row = self._row(session, principal, file_id)
            version_id = row.dataset_version_id
            session.delete(row)
            session.flush()
            if version_id is not None and not _used(session, version_id):
                _drop_version(session, version_id)
        logger.info("file %s deleted", file_id)
        return wire.FileDeleted(id=file_id, deleted=True)

    @staticmethod
    def _row(
        session: Session,
        principal: Principal,
        file_id: str,
        *,
        param: str = "file_id",
        exc: type[InvalidRequest] | type[NotFound] = NotFound,
    ) -> FileRow:
        row = session.get(FileRow, file_id)
        if row is None or row.tenant_id != principal.tenant_id:
            raise exc(f"no file {file_id[:80]!r}; list yours with GET /v1/files", param=param)
        return row


def _drop_version(session: Session, version_id: str) -> None:
    """Delete a dataset version, and its dataset when no other version is left."""
    version = session.get(DatasetVersion, version_id)
    if version is None:
        return
    dataset_id = version.dataset_id
    session.delete(version)
    session.flush()
    left = session.scalar(select(exists().where(DatasetVersion.dataset_id == dataset_id)))
    dataset = session.get(Dataset, dataset_id)
    if not left and dataset is not None:
        session.delete(dataset)


def _used(session: Session, version_id: str) -> bool:
    """Whether a job or a model version names the dataset version (lineage)."""
    by_job = exists().where(Job.dataset_version_id == version_id)
    by_model = exists().where(ModelVersion.dataset_version_id == version_id)
    return bool(session.scalar(select(or_(by_job, by_model))))
