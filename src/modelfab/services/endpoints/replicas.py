"""What replicas call with their job token: announce where they answer, fetch model files."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from modelfab.compute import lifecycle
from modelfab.db.engine import transaction
from modelfab.db.models import EndpointReplica, Model, ModelVersion
from modelfab.errors import InvalidRequest
from modelfab.ids import now
from modelfab.schemas.worker import ModelFiles, ReplicaAnnounced
from modelfab.services import registry
from modelfab.services.worker import authorized


class ReplicaCalls:
    def __init__(self, factory: sessionmaker[Session]):
        self.factory = factory

    def announce(self, job_id: str, token: str, *, url: str, secret: str) -> ReplicaAnnounced:
        """A replica's server answers at `url` to requests that present `secret` (kept
        with the replica row for the gateway and the controller, never shown to tenants).
        The controller loads the endpoint's model on it (`warm`) before the gateway routes
        requests to it. Raises InvalidRequest, Unauthenticated (a bad token)."""
        if not url.startswith(("http://", "https://")):
            raise InvalidRequest("url must be http(s)://host:port", param="url")
        with transaction(self.factory) as session:
            job = authorized(session, job_id, token)
            replica = session.get(EndpointReplica, job.id)
            if replica is None:
                raise InvalidRequest(f"job {job_id} is not an endpoint replica", param="job_id")
            replica.url, replica.secret = url, secret
            replica.attempt, replica.ready_at = job.attempt, None
            lifecycle.add_event(session, job, f"Replica answering at {url}", at=now())
        return ReplicaAnnounced(job_id=job_id, url=url, ready=False)

    def model_files(self, job_id: str, token: str, version_id: str) -> ModelFiles:
        """Where a version of the replica's own tenant keeps the files its served-model
        kind loads. Raises InvalidRequest for another tenant's or no version."""
        with self.factory() as session:
            job = authorized(session, job_id, token)
            version = session.get(ModelVersion, version_id)
            model = session.get(Model, version.model_id) if version else None
            if version is None or model is None or model.tenant_id != job.tenant_id:
                raise InvalidRequest(f"no model version {version_id} here", param="version_id")
            return registry.serving_refs(session, version_id)
