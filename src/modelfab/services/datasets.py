"""Datasets and their immutable, content-addressed versions."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelfab.data import DatasetStore, StoredDataset, extract_archive, is_archive
from modelfab.data.archive import (
    DEFAULT_MAX_EXTRACT_BYTES,
    DEFAULT_MAX_MEMBERS,
    DEFAULT_MAX_RATIO,
)
from modelfab.data.store import sweep_staging
from modelfab.db.engine import transaction
from modelfab.db.models import Dataset, DatasetVersion
from modelfab.errors import Conflict, Forbidden, InvalidRequest
from modelfab.ids import new_id, now
from modelfab.schemas import datasets as wire
from modelfab.services import idempotency, named
from modelfab.services.common import Principal, check_name
from modelfab.services.idempotency import Idempotency
from modelfab.services.named import Family
from modelfab.tasks import TaskSpec, get_task

logger = logging.getLogger(__name__)


DATASETS = Family(
    noun="dataset", parent=Dataset, version=DatasetVersion,
    parent_key=DatasetVersion.dataset_id, param="dataset",
)  # fmt: skip


def resolve_version(session: Session, tenant_id: str, ref: str) -> tuple[Dataset, DatasetVersion]:
    """The dataset and version `ref` (NAME or NAME:VERSION) names in the tenant. Raises
    InvalidRequest or NotFound (param "dataset")."""
    ds, version = named.resolve(session, DATASETS, tenant_id, ref)
    return ds, version


def version_view(ds: Dataset, v: DatasetVersion) -> wire.DatasetVersion:
    """The tenant's view: ids and content facts, never `v.uri` (a path in the shared store
    would tell one tenant that another holds the same content)."""
    return wire.DatasetVersion(
        id=v.id,
        name=ds.name,
        ref=f"{ds.name}:{v.version}",
        task=ds.task,
        version=v.version,
        sha256=v.sha256,
        file_count=v.file_count,
        size_bytes=v.size_bytes,
        stats=v.stats,
        created_at=v.created_at,
    )


def version_by_id(session: Session, version_id: str | None) -> wire.DatasetVersion | None:
    """The version with id `version_id` as the API shows it; None for no id or no row."""
    v = session.get(DatasetVersion, version_id) if version_id is not None else None
    if v is None:
        return None
    ds = session.get(Dataset, v.dataset_id)
    assert ds is not None
    return version_view(ds, v)


class DatasetService:
    def __init__(
        self,
        factory: sessionmaker[Session],
        store: DatasetStore,
        *,
        scratch: Path,
        max_extract_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
        max_archive_members: int = DEFAULT_MAX_MEMBERS,
        max_extract_ratio: float = DEFAULT_MAX_RATIO,
    ):
        self.factory = factory
        self.store = store
        self.scratch = scratch
        self.max_extract_bytes = max_extract_bytes
        self.max_archive_members = max_archive_members
        self.max_extract_ratio = max_extract_ratio

    def sweep_staging(self, older_than_s: float) -> list[Path]:
        """Remove what killed uploads left, untouched for `older_than_s` seconds: archives
        and `upload-*` folders in the scratch folder (everything there is an upload's),
        `.tmp-*` copies in the store. Uploads in progress are kept. Blocks."""
        return [*sweep_staging(self.scratch, older_than_s, pattern="*"),
                *self.store.sweep(older_than_s)]  # fmt: skip

    def create_from_path(
        self,
        principal: Principal,
        *,
        name: str,
        task: str,
        path: Path,
        idem: Idempotency | None = None,
    ) -> wire.DatasetCreated:
        """Import a folder on the server's disk (or, for a task that takes single files, one
        file). Admin only: a path could name anyone's files. A repeat with `idem` answers as
        the first time, reading nothing."""
        if not principal.is_admin:
            raise Forbidden(
                "only admins may import a server-side path; upload an archive instead",
                param="path",
            )
        spec = get_task(task)
        if not (path.is_dir() or (spec.takes_single_files and path.is_file())):
            what = "a folder or a file" if spec.takes_single_files else "a folder"
            raise InvalidRequest(f"{path} is not {what} on the server", param="path")
        check_name(name)
        idem = idem.for_body({"name": name, "task": task, "path": str(path)}) if idem else None
        if (first := self._replay(idem)) is not None:
            return first
        with self._workdir() as workdir:
            stored = self._ingest(spec, path, workdir, label=path.name)
        return self._register(principal, name, task, stored, idem)

    def create_from_upload(
        self,
        principal: Principal,
        *,
        name: str,
        task: str,
        upload: Path,
        filename: str | None = None,
        idem: Idempotency | None = None,
    ) -> wire.DatasetCreated:
        """Import an uploaded .zip/.tar/.tar.gz of the dataset folder, or, for a task that
        takes single files (chat), the one file itself (blocks); validated before anything
        is registered. `filename` is the upload's name, shown in errors. Raises
        PayloadTooLarge past `max_extract_bytes` unpacked, `max_extract_ratio` times the
        archive's size (beyond a 64 MiB floor) or `max_archive_members` entries,
        DatasetInvalid or InvalidRequest (see `extract_archive` and the task's validation).
        A repeat with `idem` (same fields, same bytes) answers as the first time, unpacking
        nothing."""
        check_name(name)
        spec = get_task(task)
        if idem is not None:
            with upload.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            idem = idem.for_body({"name": name, "task": task, "file_sha256": digest})
        if (first := self._replay(idem)) is not None:
            return first
        stored = self.ingest_upload(spec, upload, label=filename or upload.name)
        return self._register(principal, name, task, stored, idem)

    def ingest_upload(
        self, spec: TaskSpec, upload: Path, *, label: str, single_file: bool = False
    ) -> StoredDataset:
        """Validate the uploaded file `upload` as `spec` and store the dataset it makes,
        registering nothing (blocks). An archive is unpacked, unless `single_file` (the
        upload is one file of a task that takes single files, never unpacked); a task with
        `prepare_upload` converts what results. Raises as `create_from_upload`; scratch
        copies are removed whatever happens."""
        with self._workdir() as workdir:
            if single_file or (spec.takes_single_files and not is_archive(upload)):
                root = upload
            else:
                root = extract_archive(
                    upload,
                    workdir / "x",
                    max_bytes=self.max_extract_bytes,
                    max_files=self.max_archive_members,
                    max_ratio=self.max_extract_ratio,
                    label=label,
                )
            return self._ingest(spec, root, workdir, label=label)

    def _ingest(self, spec: TaskSpec, root: Path, workdir: Path, *, label: str) -> StoredDataset:
        """`root` (prepared first by tasks that convert uploads) validated and stored."""
        if spec.prepare_upload is not None:
            root = spec.prepare_upload(root, workdir / "dataset", label)
        return self.store.ingest(root, spec)

    @contextmanager
    def _workdir(self) -> Iterator[Path]:
        """A fresh `upload-*` folder in the scratch folder, removed when the block ends."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="upload-", dir=self.scratch))
        try:
            yield workdir
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _replay(self, idem: Idempotency | None) -> wire.DatasetCreated | None:
        with self.factory() as session:
            return idempotency.replay(session, idem, wire.DatasetCreated)

    def _register(
        self,
        principal: Principal,
        name: str,
        task: str,
        stored: StoredDataset,
        idem: Idempotency | None = None,
    ) -> wire.DatasetCreated:
        """Add a version for `stored`, or return the existing one with the same content;
        the answer is recorded for `idem` in the same transaction."""
        for _ in range(3):  # a concurrent create of the same name may win the insert race
            try:
                with transaction(self.factory) as session:
                    out = self.register_in(session, principal, name, task, stored)
                    idempotency.record(session, idem, 201 if out.created else 200, out)
                    return out
            except IntegrityError:
                logger.info("dataset %s: concurrent create, retrying", name)
        raise Conflict(f"dataset {name!r} is being created concurrently; retry", param="name")

    def register_in(
        self, session: Session, principal: Principal, name: str, task: str, stored: StoredDataset
    ) -> wire.DatasetCreated:
        """In the caller's transaction: add a version of the tenant's dataset `name` for
        `stored` (creating the dataset), or answer the version with the same content.
        Raises Conflict when `name` is a dataset of another task; IntegrityError when a
        concurrent create won (the caller retries)."""
        ds = session.scalar(
            select(Dataset).where(Dataset.tenant_id == principal.tenant_id, Dataset.name == name)
        )
        if ds is None:
            ds = Dataset(id=new_id("ds"), tenant_id=principal.tenant_id, name=name, task=task)
            ds.created_at = now()
            session.add(ds)
            session.flush()
        elif ds.task != task:
            raise Conflict(
                f"dataset {name!r} is a {ds.task} dataset; use another name for {task}",
                param="task",
            )
        existing = session.scalar(
            select(DatasetVersion).where(
                DatasetVersion.dataset_id == ds.id, DatasetVersion.sha256 == stored.sha256
            )
        )
        if existing is not None:
            return _created(ds, existing, created=False)
        number = (
            session.scalar(
                select(func.max(DatasetVersion.version)).where(DatasetVersion.dataset_id == ds.id)
            )
            or 0
        ) + 1
        version = DatasetVersion(
            id=new_id("dsv"),
            dataset_id=ds.id,
            version=number,
            sha256=stored.sha256,
            uri=stored.path.resolve().as_uri(),
            file_count=stored.file_count,
            size_bytes=stored.size_bytes,
            stats=stored.stats,
            created_at=now(),
        )
        session.add(version)
        session.flush()
        return _created(ds, version, created=True)

    def list_datasets(self, principal: Principal) -> list[wire.Dataset]:
        with self.factory() as session:
            rows = named.list_with_counts(session, DATASETS, principal.tenant_id)
        return [
            wire.Dataset(
                id=ds.id,
                name=ds.name,
                task=ds.task,
                latest_version=latest,
                versions=count,
                created_at=ds.created_at,
            )
            for ds, latest, count in rows
        ]

    def get(self, principal: Principal, ref: str) -> wire.DatasetVersionDetail:
        with self.factory() as session:
            ds, version = resolve_version(session, principal.tenant_id, ref)
            versions = named.version_numbers(session, DATASETS, ds.id)
            view = version_view(ds, version).model_dump()
            return wire.DatasetVersionDetail(**view, versions=list(versions))


def _created(ds: Dataset, v: DatasetVersion, *, created: bool) -> wire.DatasetCreated:
    return wire.DatasetCreated(**version_view(ds, v).model_dump(), created=created)
