"""What a running attempt may do, authenticated by its job-scoped token: read its spec,
post events, upload artifacts, and report how it ended (registering its model)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelfab.artifacts import ArtifactStore
from modelfab.compute import lifecycle
from modelfab.compute.status import JobStatus
from modelfab.db.engine import transaction
from modelfab.db.models import DatasetVersion, Job
from modelfab.errors import Conflict, InvalidRequest, ModelfabError, NotFound, Unauthenticated
from modelfab.hub.catalog import imported_meta, imported_weights
from modelfab.ids import hash_secret, now
from modelfab.metering import METERS
from modelfab.recipes.base import get_recipe
from modelfab.schemas import limits
from modelfab.schemas import worker as wire
from modelfab.schemas.jobs import Resources
from modelfab.services import registry
from modelfab.services.datasets import version_by_id

logger = logging.getLogger(__name__)

OUTCOMES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
DEFAULT_MAX_ARTIFACT_BYTES = 20 * 2**30


class WorkerService:
    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        on_change: Callable[[], None],
        artifacts: ArtifactStore | None = None,
        max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
        hub_dir: Path | None = None,
    ):
        """`artifacts` None: attempts may not upload artifacts or register models (a
        control plane of the job lifecycle only, as in scheduler tests)."""
        self.factory = factory
        self.on_change = on_change
        self.artifacts = artifacts
        self.max_artifact_bytes = max_artifact_bytes
        self.hub_dir = hub_dir

    def spec(self, job_id: str, token: str) -> wire.JobSpec:
        """Everything the running attempt needs. Raises Unauthenticated for a bad token.

        The worker fetches it once, before it runs anything: the attempt is metered from
        this moment, not from its placement, so a worker that waits out a control-plane
        outage for its spec does not bill the tenant for that outage."""
        with transaction(self.factory) as session:
            job = authorized(session, job_id, token, lock=True)
            job.started_at = now()
            return wire.JobSpec(
                job_id=job.id,
                attempt=job.attempt,
                recipe=job.recipe,
                params=job.params,
                dataset=_dataset(session, job.dataset_version_id),
                resources=Resources(gpus=job.gpus, cpus=job.cpus, memory_bytes=job.memory_bytes),
                cuda_visible_devices=job.cuda_visible_devices,
                base_weights=self._base_weights(job.params.get(_weights_param(job.recipe))),
                hub_dir=self.hub_dir.resolve().as_uri() if self.hub_dir is not None else None,
            )

    def _base_weights(self, model_id: Any) -> wire.BaseWeights | None:
        """Imported hub weights the recipe's base model needs: a file URL (workers of the
        local executor share this disk) and the sha256 the worker checks before use."""
        if self.hub_dir is None or not isinstance(model_id, str):
            return None
        path = imported_weights(self.hub_dir, model_id)
        meta = imported_meta(self.hub_dir, model_id)
        if path is None or meta is None:
            return None
        return wire.BaseWeights(
            model_id=model_id, uri=path.resolve().as_uri(), sha256=meta["sha256"]
        )

    def add_events(
        self, job_id: str, token: str, events: Sequence[wire.WorkerEvent]
    ) -> wire.EventsAccepted:
        """Store events in order (an unknown level or type becomes the default, a message
        is cut to `limits.MAX_EVENT_MESSAGE`); answers whether a cancel was requested."""
        most = limits.MAX_EVENTS_PER_CALL
        if len(events) > most:
            raise InvalidRequest(f"at most {most} events per call", param="events")
        with transaction(self.factory) as session:
            job = authorized(session, job_id, token)
            for e in events:
                at = worker_time(e.at, job.started_at)
                lifecycle.add_event(
                    session,
                    job,
                    e.message[: limits.MAX_EVENT_MESSAGE],
                    level=_pick(e.level, limits.EVENT_LEVELS),
                    type=_pick(e.type, limits.EVENT_TYPES),
                    data=e.data,
                    at=at,
                )
            return wire.EventsAccepted(accepted=len(events), cancel_requested=job.cancel_requested)

    def check_token(self, job_id: str, token: str) -> None:
        """Raises Unauthenticated unless `token` is the running attempt's of `job_id`: what
        a route checks before it reads an upload's body."""
        with self.factory() as session:
            authorized(session, job_id, token)

    def upload_artifact(
        self, job_id: str, token: str, *, name: str, format: str, sha256: str, stream: BinaryIO
    ) -> wire.ArtifactStored:
        """Store an artifact of the running attempt (blocks while copying and hashing).
        The answer is what the attempt sent (name, format, sha256, size): nothing of the
        shared store's paths or of content other tenants stored.

        Raises InvalidRequest (param sha256) when the bytes do not hash to `sha256`, and
        PayloadTooLarge past `max_artifact_bytes`.
        """
        registry.check_artifact(name, format, sha256)
        store = self._store()
        with self.factory() as session:
            authorized(session, job_id, token)
        _, actual, size = store.put_stream(stream, max_bytes=self.max_artifact_bytes)
        if actual != sha256:
            raise InvalidRequest(
                f"the uploaded {name} hashes to {actual}, not {sha256}: it was damaged on "
                "the way; upload it again",
                param="sha256",
            )
        return wire.ArtifactStored(name=name, format=format, sha256=actual, size_bytes=size)

    def model_artifacts(self, job_id: str, token: str, version_id: str) -> wire.ModelFiles:
        """Every artifact of a model version of the attempt's own tenant, by name (a
        registered model a recipe starts from). Raises InvalidRequest for another tenant's
        version or none, Unauthenticated for a bad token."""
        with self.factory() as session:
            job = authorized(session, job_id, token)
            return registry.version_artifacts(session, job.tenant_id, version_id)

    def complete(self, job_id: str, token: str, report: wire.WorkerComplete) -> wire.AttemptEnded:
        """End the attempt. A succeeded one registers each of its models (`model`, then
        `models`) as its next version in the same transaction; when one cannot be
        registered (an artifact missing or corrupt, a name of another task), none is and
        the job fails instead, saying why. Raises InvalidRequest (param status) for an
        outcome not in OUTCOMES, Conflict (param attempt) for an attempt that is over."""
        if report.status not in OUTCOMES:
            raise InvalidRequest(f"status must be one of {', '.join(OUTCOMES)}", param="status")
        models: list[registry.VerifiedModel] = []
        problem = None
        reports = [*([report.model] if report.model is not None else []), *report.models]
        if report.status == JobStatus.SUCCEEDED and reports:
            models, problem = self._verify_models(job_id, token, reports)
        for _ in range(3):  # a concurrent registration of the same new model name may win
            try:
                with transaction(self.factory) as session:
                    status = self._end(session, job_id, token, report, models, problem)
                break
            except IntegrityError:
                logger.info("job %s: concurrent model registration, retrying", job_id)
        else:
            raise Conflict("the model is being registered concurrently; retry", param="model")
        self.on_change()
        return wire.AttemptEnded(status=status)

    def _verify_models(
        self, job_id: str, token: str, reports: Sequence[wire.ModelReport]
    ) -> tuple[list[registry.VerifiedModel], ModelfabError | None]:
        """Hash the reported artifacts before the transaction (it must not wait on disks)."""
        with self.factory() as session:
            authorized(session, job_id, token)  # hash nothing for a caller without a token
        try:
            if len({r.name for r in reports}) != len(reports):
                raise InvalidRequest(
                    "each model a job registers needs its own name", param="model.name"
                )
            return [registry.verify_model(self._store(), r.model_dump()) for r in reports], None
        except ModelfabError as exc:
            logger.warning("job %s: model not registered: %s", job_id, exc.message)
            return [], exc

    def _end(
        self,
        session: Session,
        job_id: str,
        token: str,
        report: wire.WorkerComplete,
        models: Sequence[registry.VerifiedModel],
        problem: ModelfabError | None,
    ) -> JobStatus:
        job = authorized(session, job_id, token, lock=True)
        if report.attempt not in (None, job.attempt):
            raise Conflict("this attempt is over", param="attempt")
        at = worker_time(report.ended_at, job.started_at)
        outcome, error, result = JobStatus(report.status), report.error, report.result
        retryable = report.retryable
        if models and problem is None:
            try:
                with session.begin_nested():
                    refs = [registry.register_version(session, job, m, at=at).ref for m in models]
                result = {**(result or {}), "model": refs[0]}
                if len(refs) > 1:
                    result["models"] = refs
            except ModelfabError as exc:
                problem = exc
        if problem is not None:
            outcome, retryable, result = JobStatus.FAILED, False, None
            error = {
                "code": "model_not_registered",
                "message": f"the model could not be registered: {problem.message}",
                "param": problem.param,
            }
        return lifecycle.end_attempt(
            session,
            job,
            usage=recipe_usage(job.recipe, result),
            outcome=outcome,
            at=at,
            error=error,
            retryable=retryable,
            result=result,
        )

    def _store(self) -> ArtifactStore:
        if self.artifacts is None:
            raise InvalidRequest("this control plane keeps no artifacts", param="model")
        return self.artifacts


def _dataset(session: Session, version_id: str | None) -> wire.WorkerDataset | None:
    """The job's dataset version with its location in the store: the worker reads the
    content from there. Tenants' answers carry only `version_by_id`'s view."""
    view = version_by_id(session, version_id)
    row = session.get(DatasetVersion, version_id) if version_id is not None else None
    if view is None or row is None:
        return None
    return wire.WorkerDataset(**view.model_dump(), uri=row.uri)


def _weights_param(recipe: str) -> str:
    """The param naming the hub model whose imported weights the recipe gets."""
    try:
        return get_recipe(recipe).weights_param
    except NotFound:
        return "base_model"


def _pick(value: Any, allowed: tuple[str, ...]) -> str:
    """`value` when it is one of `allowed`, else the first (the default)."""
    return value if isinstance(value, str) and value in allowed else allowed[0]


def recipe_usage(recipe: str, result: dict[str, Any] | None) -> dict[str, float]:
    """The meters the recipe counts itself (its spec's `meters`), read from the attempt's
    result: finite numbers from 0 to MAX_METERED_QUANTITY, anything else left out."""
    try:
        meters = get_recipe(recipe).meters
    except NotFound:
        return {}
    found = {}
    for meter in meters:
        if meter not in METERS:  # a plugin's recipe naming a meter the platform lacks
            logger.warning("recipe %s declares unknown meter %r; not metered", recipe, meter)
            continue
        value = (result or {}).get(meter)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if 0 <= value <= limits.MAX_METERED_QUANTITY:  # also refuses nan
            found[meter] = float(value)
    return found


def worker_time(at: float | None, since: float | None) -> float:
    """A time the worker reports, by its own clock, clamped between `since` (the attempt's
    start) and now: a skewed clock never bills more than the control plane saw, nor
    less than nothing."""
    current = now()
    if at is None:
        return current
    return min(current, max(at, since if since is not None else at))


def authorized(session: Session, job_id: str, token: str, lock: bool = False) -> Job:
    """The job if `token` is its running attempt's token; raises Unauthenticated otherwise."""
    job = session.get(Job, job_id, with_for_update=lock)
    if (
        job is None
        or job.status != JobStatus.RUNNING
        or job.token_hash is None
        or not hmac.compare_digest(job.token_hash, hash_secret(token))
    ):
        raise Unauthenticated(f"job token not valid for {job_id} (wrong token or attempt over)")
    return job
