"""The gateway's view of the endpoints: its route table and `?model=` refs."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.compute.lifecycle import RUNNING
from modelfab.db.models import Endpoint, EndpointReplica, Job, Model, ModelVersion
from modelfab.gateway.types import ReplicaRoute, Route, RouteTable
from modelfab.services import registry
from modelfab.services.endpoints.rows import ACTIVE, is_ready


class RouteView:
    def __init__(self, factory: sessionmaker[Session]):
        self.factory = factory

    def routes(self) -> RouteTable:
        """Every active endpoint by (tenant id, name) with its ready replicas, oldest
        first. Endpoints being deleted have no route (the gateway answers 404)."""
        with self.factory() as session:
            endpoints = session.execute(
                select(Endpoint, Model.task)
                .join(ModelVersion, ModelVersion.id == Endpoint.model_version_id)
                .join(Model, Model.id == ModelVersion.model_id)
                .where(Endpoint.status == ACTIVE)
            ).all()
            rows = session.execute(
                select(EndpointReplica, Job)
                .join(Job, Job.id == EndpointReplica.job_id)
                .where(Job.status == RUNNING)  # narrows the read; `is_ready` decides
                .order_by(EndpointReplica.created_at)
            ).all()
        by_endpoint: dict[str, list[ReplicaRoute]] = {}
        for r, j in rows:
            if is_ready(r, j):
                assert r.url is not None  # ready replicas announced one
                route = ReplicaRoute(j.id, r.url, r.secret)
                by_endpoint.setdefault(r.endpoint_id, []).append(route)
        return {
            (e.tenant_id, e.name): Route(
                endpoint_id=e.id,
                tenant_id=e.tenant_id,
                name=e.name,
                version_id=e.model_version_id,
                max_batch_size=e.max_batch_size,
                max_wait_ms=e.max_wait_ms,
                replicas=tuple(by_endpoint.get(e.id, [])),
                task=task,
            )
            for e, task in endpoints
        }

    def servable_version(self, tenant_id: str, ref: str) -> str:
        """The version id of a servable model of the tenant. Raises NotFound (also for
        other tenants' models) or InvalidRequest (no ONNX model to serve)."""
        with self.factory() as session:
            return registry.servable(session, tenant_id, ref)[1].id
