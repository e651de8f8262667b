"""Tenant commands on endpoints: create, list, get, update, delete.

An update that changes the model stores the version as the endpoint's target and returns
at once; the controller warms it on every ready replica and switches (see
`services.endpoint_controller`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelfab.db.engine import transaction
from modelfab.db.models import Endpoint, EndpointReplica, Job, Model, ModelVersion
from modelfab.errors import Conflict, InvalidRequest
from modelfab.ids import new_id, now
from modelfab.schemas import endpoints as wire
from modelfab.schemas import limits
from modelfab.schemas.jobs import JobStatus
from modelfab.services import idempotency, registry
from modelfab.services.common import Principal, check_name
from modelfab.services.endpoints.rows import (
    ACTIVE,
    DELETING,
    cancel_replica,
    is_ready,
    own,
    replica_jobs,
    replicas_with_jobs,
)
from modelfab.services.endpoints.stats import ReplicaStatsBook, named_reports
from modelfab.services.idempotency import Idempotency
from modelfab.services.jobs import JobRequest, JobService
from modelfab.settings import ControllerSettings

SERVE_RECIPE = "serve"
UPDATING = "updating"


@dataclass(frozen=True)
class EndpointSpec:
    """What `endpoints create` asks for; `update` changes any of the optional fields."""

    name: str
    model: str  # NAME, NAME:VERSION or NAME@ALIAS
    replicas: int = 1
    gpus: float = 0.0
    cpus: float = 1.0
    memory_bytes: int = 0
    max_batch_size: int = limits.DEFAULT_MAX_BATCH_SIZE
    max_wait_ms: float = limits.DEFAULT_MAX_WAIT_MS

    def check(self) -> None:
        """Raise InvalidRequest naming the first field outside `schemas.limits`."""
        check_name(self.name)
        if not 1 <= self.replicas <= limits.MAX_REPLICAS:
            raise InvalidRequest(f"replicas must be 1-{limits.MAX_REPLICAS}", param="replicas")
        if not 1 <= self.max_batch_size <= limits.MAX_BATCH_SIZE:
            raise InvalidRequest(
                f"max_batch_size must be 1-{limits.MAX_BATCH_SIZE}", param="max_batch_size"
            )
        if not (0 <= self.max_wait_ms <= limits.MAX_WAIT_MS and math.isfinite(self.max_wait_ms)):
            raise InvalidRequest(
                f"max_wait_ms must be 0-{limits.MAX_WAIT_MS:g}", param="max_wait_ms"
            )


def replica_request(endpoint: Endpoint, *, max_attempts: int) -> JobRequest:
    """The job a replica of `endpoint` runs as."""
    threads = max(1, math.ceil(endpoint.cpus))
    return JobRequest(
        recipe=SERVE_RECIPE,
        params={"endpoint_id": endpoint.id, "intra_op_threads": threads},
        gpus=endpoint.gpus,
        cpus=endpoint.cpus,
        memory_bytes=endpoint.memory_bytes,
        priority=10,  # a serving replica outranks the tenant's batch work
        max_attempts=max_attempts,
    )


class EndpointCommands:
    def __init__(
        self,
        factory: sessionmaker[Session],
        jobs: JobService,
        settings: ControllerSettings | None = None,
    ):
        self.factory = factory
        self.jobs = jobs
        self.settings = settings if settings is not None else ControllerSettings()
        self.replica_stats = ReplicaStatsBook(max_age_s=self.settings.stats_max_age_s)
        """Replicas' latest reports: the controller's probe writes them, views read them."""
        self.on_routes_change: Callable[[], None] = lambda: None  # the gateway's invalidate

    def create(
        self, principal: Principal, spec: EndpointSpec, *, idem: Idempotency | None = None
    ) -> wire.Endpoint:
        """Store the endpoint and queue its replicas. Raises InvalidRequest, NotFound (the
        model), Conflict (the name) or Unschedulable (a replica could never be placed). A
        repeat with `idem` answers the first endpoint and queues nothing."""
        idem = idem.for_body(dataclasses.asdict(spec)) if idem else None
        spec.check()
        at = now()
        try:
            with transaction(self.factory) as session:
                first = idempotency.replay(session, idem, wire.Endpoint)
                if first is not None:
                    return first
                _, version = registry.servable(session, principal.tenant_id, spec.model)
                endpoint = Endpoint(
                    id=new_id("ep"),
                    tenant_id=principal.tenant_id,
                    name=spec.name,
                    model_ref=spec.model,
                    model_version_id=version.id,
                    replicas=spec.replicas,
                    gpus=spec.gpus,
                    cpus=spec.cpus,
                    memory_bytes=spec.memory_bytes,
                    max_batch_size=spec.max_batch_size,
                    max_wait_ms=spec.max_wait_ms,
                    status=ACTIVE,
                    error=None,
                    created_at=at,
                    updated_at=at,
                )
                session.add(endpoint)
                session.flush()
                for _ in range(spec.replicas):
                    self.add_replica(session, endpoint)
                out = endpoint_view(session, endpoint)
                idempotency.record(session, idem, 201, out)
        except IntegrityError as exc:
            raise Conflict(f"endpoint {spec.name!r} exists already", param="name") from exc
        self.jobs.on_change()
        self.on_routes_change()
        return out

    def add_replica(self, session: Session, endpoint: Endpoint) -> Job:
        """Queue one more replica job of `endpoint` in the caller's transaction."""
        request = replica_request(endpoint, max_attempts=self.settings.replica_max_attempts)
        job = self.jobs.queue(session, endpoint.tenant_id, request)
        session.flush()  # the job row first: the replica row points at it
        session.add(EndpointReplica(job_id=job.id, endpoint_id=endpoint.id, created_at=now()))
        return job

    def list_endpoints(self, principal: Principal) -> list[wire.Endpoint]:
        with self.factory() as session:
            rows = session.scalars(
                select(Endpoint)
                .where(Endpoint.tenant_id == principal.tenant_id)
                .order_by(Endpoint.name)
            ).all()
            return [endpoint_view(session, e, self.replica_stats) for e in rows]

    def get(self, principal: Principal, name: str) -> wire.Endpoint:
        with self.factory() as session:
            return endpoint_view(session, own(session, principal, name), self.replica_stats)

    def update(self, principal: Principal, name: str, update: wire.EndpointUpdate) -> wire.Endpoint:
        """Change the model, replicas, resources or batching; returns at once. A new model
        version becomes the endpoint's target (status "updating"): the controller loads it
        on every ready replica before requests switch to it, so no request fails, and keeps
        the old one if a replica cannot load it (`rollout_error`). New resources roll the
        replicas (the controller replaces them one by one). Raises InvalidRequest, NotFound."""
        changes = update.model_dump(exclude_unset=True)  # only the fields the caller sent
        for key, value in changes.items():
            if value is None:
                raise InvalidRequest(
                    f"{key} cannot be null; leave it out to keep the current value", param=key
                )
        with transaction(self.factory) as session:
            endpoint = own(session, principal, name, lock=True)
            merged = {
                k: getattr(endpoint, k) for k in EndpointSpec.__dataclass_fields__ if k != "model"
            }
            merged.update({k: v for k, v in changes.items() if k != "model"})
            EndpointSpec(model=endpoint.model_ref, **merged).check()
            for key, value in changes.items():
                if key != "model":
                    setattr(endpoint, key, value)
            if changes.get("model"):
                ref = changes["model"]
                version_id = registry.servable(session, principal.tenant_id, ref)[1].id
                _set_target(endpoint, ref, version_id)
            endpoint.error = endpoint.rollout_error = None  # this change is the news now
            endpoint.updated_at = now()
            out = endpoint_view(session, endpoint, self.replica_stats)
        self.jobs.on_change()
        self.on_routes_change()
        return out

    def start_delete(self, principal: Principal, name: str) -> str:
        """Mark the endpoint deleting (the gateway takes no new requests for it); returns
        its id for `finish_delete` once in-flight requests drained."""
        with transaction(self.factory) as session:
            endpoint = own(session, principal, name, lock=True)
            endpoint.status = DELETING
            endpoint.updated_at = now()
            return endpoint.id

    def finish_delete(self, endpoint_id: str) -> None:
        """Cancel the replicas and remove the endpoint (its jobs stay in the history)."""
        at = now()
        with transaction(self.factory) as session:
            endpoint = session.get(Endpoint, endpoint_id, with_for_update=True)
            if endpoint is None:
                return
            for job in replica_jobs(session, endpoint_id):
                cancel_replica(session, job, at)
            session.delete(endpoint)
        self.jobs.on_change()


def _set_target(endpoint: Endpoint, ref: str, version_id: str) -> None:
    """Make `version_id` the endpoint's model: now if it serves it already, else as the
    target of a rollout (replacing any rollout in progress)."""
    if version_id == endpoint.model_version_id:
        endpoint.model_ref = ref
        endpoint.target_ref = endpoint.target_version_id = endpoint.rollout = None
        return
    endpoint.target_ref, endpoint.target_version_id = ref, version_id
    endpoint.rollout = {"warmed": 0, "of": None}


def endpoint_view(
    session: Session, e: Endpoint, stats: ReplicaStatsBook | None = None
) -> wire.Endpoint:
    """The endpoint as the API shows it, with each replica's latest report from `stats`."""
    rows = replicas_with_jobs(session, e.id)
    latest = {j.id: stats.get(j.id) for _, j in rows} if stats is not None else {}
    found = {job_id: report for job_id, report in latest.items() if report is not None}
    reports = named_reports(session, e.tenant_id, found) if found else {}
    replicas = [_replica_view(r, j, reports.get(j.id)) for r, j in rows]
    ready = sum(1 for r in replicas if r.ready)
    return wire.Endpoint(
        id=e.id,
        name=e.name,
        model=_model_view(session, e.model_ref, e.model_version_id),
        status=_status(e, ready),
        replicas=e.replicas,
        ready_replicas=ready,
        gpus=e.gpus,
        cpus=e.cpus,
        memory_bytes=e.memory_bytes,
        max_batch_size=e.max_batch_size,
        max_wait_ms=e.max_wait_ms,
        error=e.error,
        rollout=_rollout_view(session, e),
        rollout_error=e.rollout_error,
        path=f"/v1/endpoints/{e.name}/predict",
        replica_jobs=replicas,
        created_at=e.created_at,
        updated_at=e.updated_at,
    )


def _model_view(session: Session, ref: str, version_id: str) -> wire.EndpointModel:
    version = session.get(ModelVersion, version_id)
    model = session.get(Model, version.model_id) if version else None
    return wire.EndpointModel(
        ref=ref,
        name=model.name if model else None,
        version=version.version if version else None,
        version_id=version_id,
    )


def _rollout_view(session: Session, e: Endpoint) -> wire.Rollout | None:
    """The model change in progress: its target, and replicas warmed so far of how many
    (`of` is None until the controller started)."""
    if e.target_version_id is None or e.target_ref is None:
        return None
    progress = e.rollout or {}
    return wire.Rollout(
        model=_model_view(session, e.target_ref, e.target_version_id),
        warmed=progress.get("warmed", 0),
        of=progress.get("of"),
    )


def _replica_view(r: EndpointReplica, j: Job, stats: wire.ReplicaStats | None) -> wire.ReplicaJob:
    ready = is_ready(r, j)
    return wire.ReplicaJob(
        job_id=j.id,
        status=JobStatus(j.status),
        attempt=j.attempt,
        ready=ready,
        url=r.url if ready else None,
        cpus=j.cpus,
        gpus=j.gpus,
        stats=stats,
    )


def _status(e: Endpoint, ready: int) -> str:
    if e.status == DELETING:
        return DELETING
    if e.error:
        return wire.FAILED
    if e.target_version_id is not None:
        return UPDATING
    if ready == 0:
        return "starting"
    return wire.READY if ready >= e.replicas else "degraded"
