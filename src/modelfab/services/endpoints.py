"""Endpoints: a registered model version served over HTTP by replica jobs.

This module owns the rows (create, update, delete, the routing view the gateway reads,
and what replicas report). Keeping the replica jobs in line with the rows is the
controller's work (`services.endpoint_controller`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelfab.compute import lifecycle
from modelfab.compute.lifecycle import QUEUED, RUNNING, VALIDATING
from modelfab.db.engine import transaction
from modelfab.db.models import (
    Endpoint,
    EndpointReplica,
    Job,
    Model,
    ModelVersion,
)
from modelfab.errors import Conflict, InvalidRequest, ModelfabError, NotFound
from modelfab.ids import new_id, now
from modelfab.services import registry
from modelfab.services.common import Principal, check_name
from modelfab.services.jobs import JobRequest, JobService
from modelfab.services.worker import authorized

logger = logging.getLogger(__name__)

ACTIVE, DELETING = "active", "deleting"
SERVE_RECIPE = "serve"
REPLICA_MAX_ATTEMPTS = 3
MAX_REPLICAS = 32
WARM_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class EndpointSpec:
    """What `endpoints create` asks for; `update` changes any of the optional fields."""

    name: str
    model: str  # NAME, NAME:VERSION or NAME@ALIAS
    replicas: int = 1
    gpus: float = 0.0
    cpus: float = 1.0
    memory_bytes: int = 0
    max_batch_size: int = 8
    max_wait_ms: float = 5.0

    def check(self) -> None:
        check_name(self.name)
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise InvalidRequest(f"replicas must be 1-{MAX_REPLICAS}", param="replicas")
        if not 1 <= self.max_batch_size <= 1024:
            raise InvalidRequest("max_batch_size must be 1-1024", param="max_batch_size")
        if not (0 <= self.max_wait_ms <= 1000 and math.isfinite(self.max_wait_ms)):
            raise InvalidRequest("max_wait_ms must be 0-1000", param="max_wait_ms")


@dataclass(frozen=True)
class ReplicaRoute:
    job_id: str
    url: str


@dataclass(frozen=True)
class Route:
    """What the gateway needs to forward one endpoint's requests (no database on the way)."""

    endpoint_id: str
    tenant_id: str
    name: str
    version_id: str
    max_batch_size: int
    max_wait_ms: float
    status: str
    replicas: tuple[ReplicaRoute, ...] = field(default_factory=tuple)


def replica_request(endpoint: Endpoint) -> JobRequest:
    """The job a replica of `endpoint` runs as."""
    threads = max(1, math.ceil(endpoint.cpus))
    return JobRequest(
        recipe=SERVE_RECIPE,
        params={"endpoint_id": endpoint.id, "intra_op_threads": threads},
        gpus=endpoint.gpus,
        cpus=endpoint.cpus,
        memory_bytes=endpoint.memory_bytes,
        priority=10,  # a serving replica outranks the tenant's batch work
        max_attempts=REPLICA_MAX_ATTEMPTS,
    )


class EndpointService:
    def __init__(self, factory: sessionmaker[Session], jobs: JobService):
        self.factory = factory
        self.jobs = jobs
        self.on_routes_change: Callable[[], None] = lambda: None  # the gateway's invalidate

    # -- tenants' verbs -------------------------------------------------------------------

    def create(self, principal: Principal, spec: EndpointSpec) -> dict[str, Any]:
        """Store the endpoint and queue its replicas. Raises InvalidRequest, NotFound (the
        model), Conflict (the name) or Unschedulable (a replica could never be placed)."""
        spec.check()
        at = now()
        try:
            with transaction(self.factory) as session:
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
                out = self._dict(session, endpoint)
        except IntegrityError as exc:
            raise Conflict(f"endpoint {spec.name!r} exists already", param="name") from exc
        self.jobs.on_change()
        self.on_routes_change()
        return out

    def add_replica(self, session: Session, endpoint: Endpoint) -> Job:
        job = self.jobs.queue(session, endpoint.tenant_id, replica_request(endpoint))
        session.flush()  # the job row first: the replica row points at it
        session.add(EndpointReplica(job_id=job.id, endpoint_id=endpoint.id, created_at=now()))
        return job

    def list_endpoints(self, principal: Principal) -> list[dict[str, Any]]:
        with self.factory() as session:
            rows = session.scalars(
                select(Endpoint)
                .where(Endpoint.tenant_id == principal.tenant_id)
                .order_by(Endpoint.name)
            ).all()
            return [self._dict(session, e) for e in rows]

    def get(self, principal: Principal, name: str) -> dict[str, Any]:
        with self.factory() as session:
            return self._dict(session, _own(session, principal, name))

    def update(self, principal: Principal, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change the model, replicas, resources or batching. A new model version is loaded
        on every ready replica before requests switch to it, so no request fails; new
        resources roll the replicas (the controller replaces them one by one)."""
        with self.factory() as session:
            endpoint = _own(session, principal, name)
            merged = {
                k: getattr(endpoint, k) for k in EndpointSpec.__dataclass_fields__ if k != "model"
            }
            merged.update({k: v for k, v in changes.items() if k != "model"})
            EndpointSpec(model=endpoint.model_ref, **merged).check()
            version_id = None
            if changes.get("model"):
                version_id = registry.servable(session, principal.tenant_id, changes["model"])[1].id
            urls = [r.url for r in ready_replicas(session, endpoint.id)]
        if version_id is not None:
            warm(urls, version_id)
        with transaction(self.factory) as session:
            endpoint = _own(session, principal, name, lock=True)
            for key, value in changes.items():
                if key == "model" and version_id is not None:
                    endpoint.model_ref, endpoint.model_version_id = value, version_id
                else:
                    setattr(endpoint, key, value)
            endpoint.error = None
            endpoint.updated_at = now()
            out = self._dict(session, endpoint)
        self.jobs.on_change()
        self.on_routes_change()
        return out

    def start_delete(self, principal: Principal, name: str) -> str:
        """Mark the endpoint deleting (the gateway takes no new requests for it); returns
        its id for `finish_delete` once in-flight requests drained."""
        with transaction(self.factory) as session:
            endpoint = _own(session, principal, name, lock=True)
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

    # -- what replicas call, with their job token ---------------------------------------------

    def announce(self, job_id: str, token: str, url: str) -> dict[str, Any]:
        """A replica's server answers at `url`. The controller loads the endpoint's model
        on it (`warm`) before the gateway routes requests to it."""
        if not url.startswith(("http://", "https://")):
            raise InvalidRequest("url must be http(s)://host:port", param="url")
        with transaction(self.factory) as session:
            job = authorized(session, job_id, token)
            replica = session.get(EndpointReplica, job.id)
            if replica is None:
                raise InvalidRequest(f"job {job_id} is not an endpoint replica", param="job_id")
            replica.url, replica.attempt, replica.ready_at = url, job.attempt, None
            lifecycle.add_event(session, job, f"Replica answering at {url}", at=now())
        return {"object": "replica", "job_id": job_id, "url": url, "ready": False}

    def model_files(self, job_id: str, token: str, version_id: str) -> dict[str, Any]:
        """The ONNX model and labels of a version of the replica's own tenant."""
        with self.factory() as session:
            job = authorized(session, job_id, token)
            version = session.get(ModelVersion, version_id)
            model = session.get(Model, version.model_id) if version else None
            if version is None or model is None or model.tenant_id != job.tenant_id:
                raise InvalidRequest(f"no model version {version_id} here", param="version_id")
            files = artifact_refs(session, version_id)
        return {"version_id": version_id, **files}

    # -- the gateway's view ---------------------------------------------------------------------

    def servable_version(self, tenant_id: str, ref: str) -> str:
        """The version id of a servable model of the tenant. Raises NotFound (also for
        other tenants' models) or InvalidRequest (no ONNX model to serve)."""
        with self.factory() as session:
            return registry.servable(session, tenant_id, ref)[1].id

    def routes(self) -> dict[tuple[str, str], Route]:
        """Every endpoint by (tenant id, name), with the replicas ready to take requests."""
        with self.factory() as session:
            endpoints = session.scalars(select(Endpoint)).all()
            ready = session.execute(
                select(EndpointReplica.endpoint_id, EndpointReplica.job_id, EndpointReplica.url)
                .join(Job, Job.id == EndpointReplica.job_id)
                .where(
                    Job.status == RUNNING,
                    Job.cancel_requested.is_(False),
                    Job.attempt == EndpointReplica.attempt,
                    EndpointReplica.url.is_not(None),
                    EndpointReplica.ready_at.is_not(None),
                )
                .order_by(EndpointReplica.created_at)
            ).all()
        by_endpoint: dict[str, list[ReplicaRoute]] = {}
        for endpoint_id, job_id, url in ready:
            assert url is not None  # filtered above
            by_endpoint.setdefault(endpoint_id, []).append(ReplicaRoute(job_id, url))
        return {
            (e.tenant_id, e.name): Route(
                endpoint_id=e.id,
                tenant_id=e.tenant_id,
                name=e.name,
                version_id=e.model_version_id,
                max_batch_size=e.max_batch_size,
                max_wait_ms=e.max_wait_ms,
                status=e.status,
                replicas=tuple(by_endpoint.get(e.id, [])),
            )
            for e in endpoints
        }

    def _dict(self, session: Session, e: Endpoint) -> dict[str, Any]:
        version = session.get(ModelVersion, e.model_version_id)
        model = session.get(Model, version.model_id) if version else None
        replicas = [_replica_dict(r, j) for r, j in replicas_with_jobs(session, e.id)]
        ready = sum(1 for r in replicas if r["ready"])
        return {
            "object": "endpoint",
            "id": e.id,
            "name": e.name,
            "model": {
                "ref": e.model_ref,
                "name": model.name if model else None,
                "version": version.version if version else None,
                "version_id": e.model_version_id,
            },
            "status": _status(e, ready),
            "replicas": e.replicas,
            "ready_replicas": ready,
            "gpus": e.gpus,
            "cpus": e.cpus,
            "memory_bytes": e.memory_bytes,
            "max_batch_size": e.max_batch_size,
            "max_wait_ms": e.max_wait_ms,
            "error": e.error,
            "path": f"/v1/endpoints/{e.name}/predict",
            "replica_jobs": replicas,
            "created_at": e.created_at,
            "updated_at": e.updated_at,
        }


def artifact_refs(session: Session, version_id: str) -> dict[str, Any]:
    return registry.serving_refs(session, version_id)


def ready_replicas(session: Session, endpoint_id: str) -> list[EndpointReplica]:
    return [r for r, j in replicas_with_jobs(session, endpoint_id) if _is_ready(r, j)]


def replica_jobs(session: Session, endpoint_id: str) -> list[Job]:
    return [j for _, j in replicas_with_jobs(session, endpoint_id)]


def cancel_replica(session: Session, job: Job, at: float) -> None:
    if job.status in (VALIDATING, QUEUED):
        lifecycle.cancel_queued(session, job, at)
    elif job.status == RUNNING and not job.cancel_requested:
        job.cancel_requested = True
        lifecycle.add_event(session, job, "Replica stopping", level="info", at=at)


def warm_one(http: httpx.Client, url: str, version_id: str) -> str | None:
    """Load `version_id` on the replica at `url`: None when loaded, else the reason.
    Raises httpx.TransportError when the replica does not answer."""
    resp = http.post(f"{url}/models/{version_id}/load")
    if resp.status_code < 400:
        return None
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}: {resp.text[:200]}"


def warm(urls: list[str | None], version_id: str) -> None:
    """Load `version_id` on each replica (blocks until loaded). Raises ModelfabError
    when a replica cannot load it, so an update never switches to a broken model."""
    with httpx.Client(timeout=WARM_TIMEOUT_S) as http:
        for url in urls:
            if url is None:
                continue
            try:
                problem = warm_one(http, url, version_id)
            except httpx.TransportError as exc:  # the replica died; its successor is warmed
                logger.warning("could not warm %s on %s: %s", version_id, url, exc)
                continue
            if problem is not None:
                raise ModelfabError(
                    f"a replica could not load the new model: {problem}", code="model_load_failed"
                )


def replicas_with_jobs(session: Session, endpoint_id: str) -> list[tuple[EndpointReplica, Job]]:
    rows = session.execute(
        select(EndpointReplica, Job)
        .join(Job, Job.id == EndpointReplica.job_id)
        .where(EndpointReplica.endpoint_id == endpoint_id)
        .order_by(EndpointReplica.created_at)
    ).all()
    return [(r, j) for r, j in rows]


def _is_ready(r: EndpointReplica, j: Job) -> bool:
    return (
        j.status == RUNNING
        and not j.cancel_requested
        and r.attempt == j.attempt
        and r.url is not None
        and r.ready_at is not None
    )


def _replica_dict(r: EndpointReplica, j: Job) -> dict[str, Any]:
    return {
        "job_id": j.id,
        "status": j.status,
        "attempt": j.attempt,
        "ready": _is_ready(r, j),
        "url": r.url if _is_ready(r, j) else None,
        "cpus": j.cpus,
        "gpus": j.gpus,
    }


def _status(e: Endpoint, ready: int) -> str:
    if e.status == DELETING:
        return DELETING
    if e.error:
        return "failed"
    if ready == 0:
        return "starting"
    return "ready" if ready >= e.replicas else "degraded"


def _own(session: Session, principal: Principal, name: str, lock: bool = False) -> Endpoint:
    stmt = select(Endpoint).where(Endpoint.tenant_id == principal.tenant_id, Endpoint.name == name)
    endpoint = session.scalar(stmt.with_for_update() if lock else stmt)
    if endpoint is None:
        raise NotFound(
            f"no endpoint named {name!r}; list yours with `modelfab endpoints list`", param="name"
        )
    return endpoint
