"""What replicas call with their job token: the announce keeps the replica's secret for the
gateway and the controller, and no tenant ever sees it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from modelfab.db.engine import transaction
from modelfab.db.models import EndpointReplica
from modelfab.ids import now
from modelfab.schemas.worker import ServingAnnounce
from modelfab.services.common import Principal
from modelfab.services.endpoints import EndpointService
from modelfab.services.jobs import JobService
from tests.registry_factories import insert_running_job
from tests.services.test_endpoint_controller import serving_endpoint, tenant_of

SECRET = "s" * 43


def test_an_announced_secret_reaches_the_routes_and_never_a_tenant(
    factory: sessionmaker[Session],
) -> None:
    serving_endpoint(factory, replicas=1)
    tenant_id = tenant_of(factory)
    job_id, token = insert_running_job(factory, tenant_id)
    with transaction(factory) as session:
        session.add(EndpointReplica(job_id=job_id, endpoint_id="ep_1", created_at=now() + 9))
    service = EndpointService(factory, JobService(factory, None, node_ids=[]))

    service.announce(job_id, token, url="http://127.0.0.1:7", secret=SECRET)
    with transaction(factory) as session:
        row = session.get(EndpointReplica, job_id)
        assert row is not None and row.secret == SECRET
        row.ready_at = now()  # as the controller's warm would

    [route] = service.routes().values()
    assert [(r.url, r.secret) for r in route.replicas] == [
        ("http://127.0.0.1:9", "secret-1"),  # rows of serving_endpoint
        ("http://127.0.0.1:7", SECRET),
    ]
    tenant = Principal(tenant_id=tenant_id, tenant_name="vision", role="member", key_id="k")
    shown = service.get(tenant, "parts").model_dump_json()
    assert "http://127.0.0.1:7" in shown and SECRET not in shown and "secret-1" not in shown


@pytest.mark.parametrize("secret", ["", "short", "x" * 129, "a b" * 20, "é" * 40])
def test_an_announce_without_a_real_secret_is_refused(secret: str) -> None:
    with pytest.raises(ValidationError, match="secret"):
        ServingAnnounce.model_validate({"url": "http://127.0.0.1:7", "secret": secret})
