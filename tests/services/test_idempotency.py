"""An endpoint create retried with its Idempotency-Key answers the first endpoint and
queues no more replicas; the key's record commits with the endpoint."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.compute.pool import detect_node, register_node
from modelfab.db.models import Endpoint, Job
from modelfab.services.common import Principal
from modelfab.services.endpoints import EndpointService, EndpointSpec
from modelfab.services.idempotency import Idempotency
from modelfab.services.jobs import JobService
from modelfab.settings import ServerSettings
from tests.services.test_endpoint_controller import serving_endpoint, tenant_of


def count(factory: sessionmaker[Session], model: type) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_a_repeated_endpoint_create_answers_the_first(
    factory: sessionmaker[Session], settings: ServerSettings
) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    register_node(factory, detect_node(settings.home, fake_gpus=0, cpus=8), executor="local")
    serving_endpoint(factory, replicas=1)
    tenant_id = tenant_of(factory)
    tenant = Principal(tenant_id=tenant_id, tenant_name="vision", role="member", key_id="k")
    service = EndpointService(factory, JobService(factory, None, node_ids=[]))
    idem = Idempotency(tenant_id=tenant_id, key="e-1", route="POST /v1/endpoints", ttl_s=60)
    spec = EndpointSpec(name="parts-2", model="parts:2", replicas=2)
    jobs_before = count(factory, Job)

    first = service.create(tenant, spec, idem=idem)
    again = service.create(tenant, spec, idem=idem)

    assert again == first
    assert count(factory, Endpoint) == 2  # serving_endpoint's and this one
    assert count(factory, Job) == jobs_before + 2
