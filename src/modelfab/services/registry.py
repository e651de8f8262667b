"""The model registry: immutable versions registered by the jobs that produced them, their
artifacts in the content-addressed store, their lineage, and movable aliases.

A version is only ever created by `register_version`, inside the transaction that ends the
job's attempt as succeeded (see `WorkerService.complete`), so a model version exists if and
only if its job succeeded, and at most one exists per job and model name (a job may
register several models: llm-distill's students).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

import modelfab
from modelfab.artifacts import SHA256_RE, ArtifactStore
from modelfab.db.engine import transaction
from modelfab.db.models import (
    Dataset,
    DatasetVersion,
    Job,
    Model,
    ModelAlias,
    ModelArtifact,
    ModelVersion,
)
from modelfab.errors import Conflict, InvalidRequest, ModelfabError, NotFound
from modelfab.hub.catalog import (
    CATALOG,
    CHAT_CATALOG,
    EMBEDDING_CATALOG,
    ChatEntry,
    EmbeddingEntry,
    HubEntry,
)
from modelfab.ids import new_id, now
from modelfab.recipes.base import get_recipe
from modelfab.schemas import models as wire
from modelfab.schemas.worker import FileRef, ModelFiles
from modelfab.services import named
from modelfab.services.common import Principal, check_name
from modelfab.services.named import Family
from modelfab.tasks import get_task, task_names

logger = logging.getLogger(__name__)

ARTIFACT_FORMATS = ("pytorch", "onnx", "json", "numpy", "png", "safetensors", "text")
ONNX_NAME, LABELS_NAME = "model.onnx", "labels.json"
"""The artifacts the ONNX kinds serve from (which a task needs: `TaskSpec.serving_artifacts`)."""
ARTIFACT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_ARTIFACTS = 32


def check_artifact(name: str, format: str, sha256: str | None = None) -> None:
    """Artifact names are plain file names (they become download names); raises InvalidRequest."""
    if not ARTIFACT_NAME_RE.match(name):
        raise InvalidRequest(
            f"artifact name {name[:200]!r} is not valid: use a file name of letters, digits, "
            "'.', '_' or '-' (for example weights.pt)",
            param="name",
        )
    if format not in ARTIFACT_FORMATS:
        raise InvalidRequest(
            f"artifact format must be one of {', '.join(ARTIFACT_FORMATS)}, got {format!r}",
            param="format",
        )
    if sha256 is not None and not SHA256_RE.fullmatch(sha256):
        raise InvalidRequest("sha256 must be 64 lower-case hex digits", param="sha256")


# --------------------------------------------------------------------------- registration


@dataclass(frozen=True)
class VerifiedModel:
    """A worker's model report whose artifacts were found intact in the store."""

    name: str
    task: str
    artifacts: tuple[dict[str, Any], ...]  # name, format, uri, sha256, size_bytes
    metrics: dict[str, Any]
    base_model: str | None
    extra: dict[str, Any]
    parent_version_id: str | None = None


def verify_model(store: ArtifactStore, payload: dict[str, Any]) -> VerifiedModel:
    """Check a model report and re-hash each of its artifacts in the store (blocks).

    Call it outside any transaction. Raises a ModelfabError whose message says what is
    wrong: InvalidRequest for a malformed report, NotFound for an artifact that is not in
    the store, ArtifactCorrupt for one whose content does not match its sha256.
    """
    name = check_name(str(payload.get("name") or ""), param="model.name")
    task = str(payload.get("task") or "")
    if task not in task_names():
        raise InvalidRequest(
            f"model task must be one of {', '.join(task_names())}, got {task!r}",
            param="model.task",
        )
    raw = payload.get("artifacts") or []
    if not raw or len(raw) > MAX_ARTIFACTS:
        raise InvalidRequest(
            f"a model has 1 to {MAX_ARTIFACTS} artifacts, got {len(raw)}", param="model.artifacts"
        )
    checked = [_checked_artifact(a) for a in raw]
    if len({a["name"] for a in checked}) != len(checked):
        raise InvalidRequest("artifact names must be unique", param="model.artifacts")
    artifacts = tuple(_verify_artifact(store, a) for a in checked)
    return VerifiedModel(
        name=name,
        task=task,
        artifacts=artifacts,
        metrics=dict(payload.get("metrics") or {}),
        base_model=payload.get("base_model"),
        extra=dict(payload.get("extra") or {}),
        parent_version_id=payload.get("parent_version_id"),
    )


def _checked_artifact(a: Any) -> dict[str, Any]:
    keys = ("name", "format", "sha256", "size_bytes")
    if not isinstance(a, dict) or any(k not in a for k in keys):
        raise InvalidRequest(
            f"each artifact needs {', '.join(keys)} (the answer of the artifacts upload)",
            param="model.artifacts",
        )
    out = {k: a[k] for k in keys}
    check_artifact(str(out["name"]), str(out["format"]), str(out["sha256"]))
    return out


def _verify_artifact(store: ArtifactStore, a: dict[str, Any]) -> dict[str, Any]:
    """`a` with its address in the store, found by sha256 (a report never names a path)."""
    uri = store.uri_for(a["sha256"])
    path = store.open_verified(uri, a["sha256"])
    size = path.stat().st_size
    if size != a["size_bytes"]:
        raise InvalidRequest(
            f"artifact {a['name']} has {size} bytes in the store, not {a['size_bytes']}",
            param="model.artifacts",
        )
    return {**a, "uri": uri}


def register_version(
    session: Session, job: Job, model: VerifiedModel, *, at: float
) -> wire.ModelVersion:
    """Add the next version of `model.name` for the job's tenant, in the caller's transaction.

    Idempotent per job and name: a second call for the same job and model name returns the
    version it made. Checks come before any write, and raise Conflict when the name belongs
    to a model of another task, InvalidRequest when `parent_version_id` is not a version of
    the tenant. A concurrent registration of the same new name raises IntegrityError: retry
    the transaction.
    """
    # The row lock serialises version numbering of one model across writers (PostgreSQL).
    row = session.scalar(
        select(Model)
        .where(Model.tenant_id == job.tenant_id, Model.name == model.name)
        .with_for_update()
    )
    if row is not None:
        existing = session.scalar(
            select(ModelVersion).where(
                ModelVersion.job_id == job.id, ModelVersion.model_id == row.id
            )
        )
        if existing is not None:
            return _version_view(session, row, existing)
    parent = _parent(session, job.tenant_id, model.parent_version_id)
    if row is not None and row.task != model.task:
        raise Conflict(
            f"model {model.name!r} is a {row.task} model; register {model.task} under "
            "another name (the model_name param)",
            param="model.name",
        )
    if row is None:
        row = Model(id=new_id("mdl"), tenant_id=job.tenant_id, name=model.name, task=model.task)
        row.created_at = at
        session.add(row)
        session.flush()
    number = (
        session.scalar(
            select(func.max(ModelVersion.version)).where(ModelVersion.model_id == row.id)
        )
        or 0
    ) + 1
    version = ModelVersion(
        id=new_id("mv"),
        model_id=row.id,
        version=number,
        job_id=job.id,
        dataset_version_id=job.dataset_version_id,
        recipe=job.recipe,
        recipe_version=_recipe_version(job.recipe),
        base_model=model.base_model,
        params=job.params,
        metrics=model.metrics,
        extra=model.extra,
        lineage={**_lineage(session, job, model), **({"parent_model": parent} if parent else {})},
        created_at=at,
    )
    session.add(version)
    session.flush()
    for a in model.artifacts:
        session.add(ModelArtifact(model_version_id=version.id, **a))
    session.flush()
    logger.info("registered %s:%d from job %s", row.name, number, job.id)
    return _version_view(session, row, version)


def _parent(session: Session, tenant_id: str, version_id: str | None) -> dict[str, Any] | None:
    """{id, ref} of the tenant's version `version_id` a model was made from (None for
    None). Raises InvalidRequest for another tenant's version or none."""
    if version_id is None:
        return None
    version = session.get(ModelVersion, version_id)
    owner = session.get(Model, version.model_id) if version is not None else None
    if version is None or owner is None or owner.tenant_id != tenant_id:
        raise InvalidRequest(
            f"no model version {version_id} to record as the parent", param="model.parent"
        )
    return {"id": version.id, "ref": f"{owner.name}:{version.version}"}


def _recipe_version(recipe: str) -> str:
    try:
        return get_recipe(recipe).version
    except ModelfabError:  # a recipe removed from the catalog since the job was created
        return "unknown"


def _lineage(session: Session, job: Job, model: VerifiedModel) -> dict[str, Any]:
    dataset_ref = dataset_sha256 = None
    if job.dataset_version_id is not None:
        dsv = session.get(DatasetVersion, job.dataset_version_id)
        ds = session.get(Dataset, dsv.dataset_id) if dsv else None
        if dsv is not None and ds is not None:
            dataset_ref, dataset_sha256 = f"{ds.name}:{dsv.version}", dsv.sha256
    return {
        "job_id": job.id,
        "attempt": job.attempt,
        "dataset_version_id": job.dataset_version_id,
        "dataset_ref": dataset_ref,
        "dataset_sha256": dataset_sha256,
        "recipe": job.recipe,
        "recipe_version": _recipe_version(job.recipe),
        "base_model": model.base_model,
        "params": job.params,
        "code_version": modelfab.__version__,
    }


# --------------------------------------------------------------------------- references


MODELS = Family(
    noun="model", parent=Model, version=ModelVersion,
    parent_key=ModelVersion.model_id, param="ref", aliases=True,
)  # fmt: skip


def parse_ref(ref: str) -> named.Ref:
    """`NAME` (latest), `NAME:VERSION` or `NAME@ALIAS`. Raises InvalidRequest (param "ref")."""
    return named.parse_ref(MODELS, ref)


def servable(session: Session, tenant_id: str, ref: str) -> tuple[Model, ModelVersion]:
    """The model version `ref` names, if it can be served (an endpoint or a batch-inspection
    job can run it): its task has a served-model kind and the version has every artifact
    that kind needs (`TaskSpec.serving_artifacts`; model.onnx and labels.json for the
    vision tasks). Raises NotFound or InvalidRequest saying what is missing."""
    model, version = resolve(session, tenant_id, ref)
    spec = get_task(model.task)
    if not spec.servable:
        raise InvalidRequest(
            f"model {model.name}:{version.version} is a {model.task} model, which no replica "
            "serves",
            param="model",
        )
    names = set(
        session.scalars(
            select(ModelArtifact.name).where(ModelArtifact.model_version_id == version.id)
        )
    )
    missing = set(spec.serving_artifacts) - names
    if missing:
        raise InvalidRequest(
            f"model {model.name}:{version.version} has no {', '.join(sorted(missing))}; a "
            f"{model.task} model needs {', '.join(spec.serving_artifacts)} to be served "
            "(export it, or register it again from a recipe that does)",
            param="model",
        )
    return model, version


def serving_refs(session: Session, version_id: str) -> ModelFiles:
    """Where a servable version's files are, as a replica fetches them: `artifacts`
    {name: {uri, sha256}} for every serving artifact of its task (every artifact, for a
    task that `serves_every_artifact`), and for the ONNX kinds
    also `onnx` and `labels` (the shape older readers use)."""
    version = session.get(ModelVersion, version_id)
    model = session.get(Model, version.model_id) if version else None
    spec = get_task(model.task) if model else None
    query = select(ModelArtifact).where(ModelArtifact.model_version_id == version_id)
    if spec is None or not spec.serves_every_artifact:
        query = query.where(ModelArtifact.name.in_(spec.serving_artifacts if spec else ()))
    rows = session.scalars(query).all()
    by_name = {a.name: FileRef(uri=a.uri, sha256=a.sha256) for a in rows}
    return ModelFiles(
        version_id=version_id,
        task=model.task if model else None,
        artifacts=by_name,
        onnx=by_name.get(ONNX_NAME),
        labels=by_name.get(LABELS_NAME),
    )


def version_artifacts(session: Session, tenant_id: str, version_id: str) -> ModelFiles:
    """Every artifact of the tenant's version `version_id`, by name, as a recipe fetches
    them (a registered model it starts from). Raises InvalidRequest (param version_id) for
    another tenant's version or none, so ids do not leak."""
    version = session.get(ModelVersion, version_id)
    model = session.get(Model, version.model_id) if version else None
    if version is None or model is None or model.tenant_id != tenant_id:
        raise InvalidRequest(f"no model version {version_id} here", param="version_id")
    artifacts = {
        a.name: FileRef(uri=a.uri, sha256=a.sha256) for a in _artifacts(session, version_id)
    }
    return ModelFiles(version_id=version_id, task=model.task, artifacts=artifacts)


def registered_model(
    session: Session, tenant_id: str, ref: str, tasks: tuple[str, ...]
) -> tuple[Model, ModelVersion]:
    """The version `ref` names in the tenant, of one of `tasks` (any task when empty).
    Raises InvalidRequest or NotFound saying what is wrong."""
    model, version = resolve(session, tenant_id, ref)
    if tasks and model.task not in tasks:
        raise InvalidRequest(
            f"model {model.name}:{version.version} is a {model.task} model, not "
            f"{' or '.join(tasks)}",
            param="ref",
        )
    return model, version


def resolve(session: Session, tenant_id: str, ref: str) -> tuple[Model, ModelVersion]:
    """The model and version `ref` names in the tenant. Raises InvalidRequest for a
    malformed ref, NotFound (also for other tenants' models, so names do not leak)."""
    model, version = named.resolve(session, MODELS, tenant_id, ref, by_alias=_by_alias)
    return model, version


def _by_alias(stmt: Select[Any], model: Model, alias: str) -> Select[Any]:
    return stmt.join(ModelAlias, ModelAlias.model_version_id == ModelVersion.id).where(
        ModelAlias.model_id == model.id, ModelAlias.alias == alias
    )


# --------------------------------------------------------------------------- views


def _aliases(session: Session, model_id: str) -> dict[str, int]:
    rows = session.execute(
        select(ModelAlias.alias, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == ModelAlias.model_version_id)
        .where(ModelAlias.model_id == model_id)
        .order_by(ModelAlias.alias)
    ).all()
    return {alias: number for alias, number in rows}


def _artifacts(session: Session, version_id: str) -> list[ModelArtifact]:
    return list(
        session.scalars(
            select(ModelArtifact)
            .where(ModelArtifact.model_version_id == version_id)
            .order_by(ModelArtifact.name)
        )
    )


def _version_view(session: Session, model: Model, v: ModelVersion) -> wire.ModelVersion:
    aliases = [a for a, n in _aliases(session, model.id).items() if n == v.version]
    return wire.ModelVersion(
        id=v.id,
        name=model.name,
        ref=f"{model.name}:{v.version}",
        task=model.task,
        version=v.version,
        aliases=aliases,
        job_id=v.job_id,
        dataset_version_id=v.dataset_version_id,
        recipe=v.recipe,
        recipe_version=v.recipe_version,
        base_model=v.base_model,
        params=v.params,
        metrics=v.metrics,
        extra=v.extra,
        artifacts=[_artifact_view(a) for a in _artifacts(session, v.id)],
        lineage=v.lineage,
        created_at=v.created_at,
    )


def _artifact_view(a: ModelArtifact) -> wire.Artifact:
    return wire.Artifact(name=a.name, format=a.format, sha256=a.sha256, size_bytes=a.size_bytes)


def _base_model(model_id: str | None) -> wire.BaseModelRef | None:
    """The hub entry a version started from (only its id once it left the catalog)."""
    if model_id is None:
        return None
    entries: list[HubEntry | ChatEntry | EmbeddingEntry] = [
        *CATALOG,
        *CHAT_CATALOG,
        *EMBEDDING_CATALOG,
    ]
    for e in entries:
        if e.id == model_id:
            return wire.BaseModelRef(id=e.id, arch=e.arch, source=e.source, licence=e.licence)
    return wire.BaseModelRef(id=model_id)


# --------------------------------------------------------------------------- service


class RegistryService:
    """What tenants do with the registry: read versions, move aliases, fetch artifacts."""

    def __init__(self, factory: sessionmaker[Session], store: ArtifactStore):
        self.factory = factory
        self.store = store

    def list_models(self, principal: Principal) -> list[wire.Model]:
        with self.factory() as session:
            rows = named.list_with_counts(session, MODELS, principal.tenant_id)
            return [
                wire.Model(
                    id=m.name,
                    created=int(m.created_at),
                    owned_by=principal.tenant_name,
                    name=m.name,
                    task=m.task,
                    latest_version=latest,
                    versions=count,
                    aliases=_aliases(session, m.id),
                    created_at=m.created_at,
                )
                for m, latest, count in rows
            ]

    def get(self, principal: Principal, ref: str) -> wire.ModelVersionDetail:
        with self.factory() as session:
            model, version = resolve(session, principal.tenant_id, ref)
            versions = named.version_numbers(session, MODELS, model.id)
            view = _version_view(session, model, version).model_dump()
            return wire.ModelVersionDetail(**view, versions=list(versions))

    def set_alias(
        self, principal: Principal, name: str, *, alias: str, version: int
    ) -> wire.ModelVersion:
        """Point `alias` of `name` at `version`, creating or moving it; answers the version."""
        check_name(alias, param="alias")
        for _ in range(3):  # a concurrent first set of the same alias may win the insert
            try:
                with transaction(self.factory) as session:
                    return self._set_alias_once(session, principal, name, alias, version)
            except IntegrityError:
                logger.info("alias %s@%s: concurrent set, retrying", name, alias)
        raise Conflict(f"alias {alias!r} is being set concurrently; retry", param="alias")

    def _set_alias_once(
        self, session: Session, principal: Principal, name: str, alias: str, number: int
    ) -> wire.ModelVersion:
        model = named.find_parent(session, MODELS, principal.tenant_id, name)
        version = session.scalar(
            select(ModelVersion).where(
                ModelVersion.model_id == model.id, ModelVersion.version == number
            )
        )
        if version is None:
            raise NotFound(f"model {name!r} has no version {number}", param="version")
        row = session.scalar(
            select(ModelAlias)
            .where(ModelAlias.model_id == model.id, ModelAlias.alias == alias)
            .with_for_update()
        )
        if row is None:
            row = ModelAlias(model_id=model.id, alias=alias)
            session.add(row)
        row.model_version_id, row.updated_at = version.id, now()
        session.flush()
        return _version_view(session, model, version)

    def lineage(self, principal: Principal, ref: str) -> wire.Lineage:
        with self.factory() as session:
            model, v = resolve(session, principal.tenant_id, ref)
            job = session.get(Job, v.job_id) if v.job_id else None
            lin = v.lineage
            dataset = None
            if lin.get("dataset_version_id"):
                dataset = wire.LineageDataset(
                    id=lin["dataset_version_id"],
                    ref=lin.get("dataset_ref"),
                    sha256=lin.get("dataset_sha256"),
                )
            return wire.Lineage(
                model_version=wire.LineageVersion(
                    id=v.id,
                    ref=f"{model.name}:{v.version}",
                    name=model.name,
                    version=v.version,
                    task=model.task,
                    created_at=v.created_at,
                ),
                dataset=dataset,
                job=wire.LineageJob(
                    id=lin.get("job_id"),
                    recipe=lin.get("recipe"),
                    recipe_version=lin.get("recipe_version"),
                    attempt=lin.get("attempt"),
                    status=job.status if job is not None else None,
                ),
                base_model=_base_model(v.base_model),
                parent_model=lin.get("parent_model"),
                params=lin.get("params"),
                code_version=lin.get("code_version"),
                endpoints=[],
            )

    def artifact(self, principal: Principal, ref: str, name: str) -> tuple[Path, wire.Artifact]:
        """The verified path of artifact `name` of `ref` and its record (blocks: re-hashes).

        Raises NotFound, or ArtifactCorrupt (409) when the stored file was changed.
        """
        with self.factory() as session:
            model, v = resolve(session, principal.tenant_id, ref)
            row = session.scalar(
                select(ModelArtifact).where(
                    ModelArtifact.model_version_id == v.id, ModelArtifact.name == name
                )
            )
            if row is None:
                raise NotFound(
                    f"model {model.name}:{v.version} has no artifact {name[:200]!r}", param="name"
                )
            record = _artifact_view(row)
            uri, sha256 = row.uri, row.sha256
        return self.store.open_verified(uri, sha256), record
