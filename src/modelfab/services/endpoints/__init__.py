"""Endpoints: a registered model version served over HTTP by replica jobs.

- `commands`: what tenants do (create, list, get, update, delete);
- `replicas`: what replicas call with their job token (announce, model files);
- `routes`: the gateway's view (its route table, `?model=` refs);
- `rows`: the shared reads, with the one definition of a ready replica.

Keeping the replica jobs in line with the rows, and rolling a new model version out, is
the controller's work (`services.endpoint_controller`).
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from modelfab.gateway.types import RouteTable
from modelfab.schemas.worker import ModelFiles, ReplicaAnnounced
from modelfab.services.endpoints.commands import (
    SERVE_RECIPE,
    UPDATING,
    EndpointCommands,
    EndpointSpec,
    endpoint_view,
    replica_request,
)
from modelfab.services.endpoints.replicas import ReplicaCalls
from modelfab.services.endpoints.routes import RouteView
from modelfab.services.endpoints.rows import ACTIVE, DELETING, is_ready
from modelfab.services.jobs import JobService
from modelfab.settings import ControllerSettings

__all__ = [
    "ACTIVE",
    "DELETING",
    "SERVE_RECIPE",
    "UPDATING",
    "EndpointCommands",
    "EndpointService",
    "EndpointSpec",
    "ReplicaCalls",
    "RouteView",
    "endpoint_view",
    "is_ready",
    "replica_request",
]


class EndpointService(EndpointCommands):
    """The tenant commands, plus the replicas' calls and the gateway's view under the
    names the routers and the platform use."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        jobs: JobService,
        settings: ControllerSettings | None = None,
    ):
        super().__init__(factory, jobs, settings)
        self.replica_calls = ReplicaCalls(factory)
        self.view = RouteView(factory)

    def announce(self, job_id: str, token: str, *, url: str, secret: str) -> ReplicaAnnounced:
        return self.replica_calls.announce(job_id, token, url=url, secret=secret)

    def model_files(self, job_id: str, token: str, version_id: str) -> ModelFiles:
        return self.replica_calls.model_files(job_id, token, version_id)

    def routes(self) -> RouteTable:
        return self.view.routes()

    def servable_version(self, tenant_id: str, ref: str) -> str:
        return self.view.servable_version(tenant_id, ref)
