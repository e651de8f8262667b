"""`services.usage.summary`: grouping and who sees what, over records written directly."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from modelfab import metering
from modelfab.db.engine import transaction
from modelfab.errors import InvalidRequest
from modelfab.services import usage
from modelfab.services.common import Principal
from modelfab.services.tenants import Quota, create_tenant

GONE = "ep_0123456789abcdef"  # an endpoint id with no endpoint row (deleted since)


def _tenant(factory: sessionmaker[Session], name: str) -> Principal:
    tenant = create_tenant(factory, name=name, quota=Quota())
    return Principal(tenant.id, name, "member", "key")


def _record(
    factory: sessionmaker[Session], who: Principal, meter: str, qty: float, ref: tuple[str, str]
) -> None:
    with transaction(factory) as session:
        metering.record(
            session,
            tenant_id=who.tenant_id,
            meter=meter,
            quantity=qty,
            ref_type=ref[0],
            ref_id=ref[1],
            key=f"{who.tenant_id}:{ref[1]}:{meter}:{qty}",
        )


def test_by_endpoint_sums_endpoint_usage_only_and_shows_a_deleted_endpoint_by_id(
    factory: sessionmaker[Session],
) -> None:
    team, other = _tenant(factory, "team"), _tenant(factory, "other")
    _record(factory, team, "requests", 1, ("endpoint", GONE))
    _record(factory, team, "requests", 2, ("endpoint", GONE))
    _record(factory, team, "items", 5, ("endpoint", GONE))
    _record(factory, team, "cpu_seconds", 9, ("job", "job_1"))
    _record(factory, other, "requests", 7, ("endpoint", "ep_other"))

    rows = usage.summary(factory, principal=team, since=None, by="endpoint")

    assert [r.model_dump() for r in rows] == [
        {"tenant": "team", "endpoint": GONE, "endpoint_id": GONE, "meter": "items",
         "quantity": 5, "records": 1},
        {"tenant": "team", "endpoint": GONE, "endpoint_id": GONE, "meter": "requests",
         "quantity": 3, "records": 2},
    ]  # fmt: skip
    admin = Principal(team.tenant_id, "team", "admin", "key")
    everyone = usage.summary(factory, principal=admin, since=None, by="endpoint")
    assert {(r.tenant, r.meter) for r in everyone} == {
        ("other", "requests"), ("team", "items"), ("team", "requests"),
    }  # fmt: skip


def test_an_unknown_grouping_names_the_param(factory: sessionmaker[Session]) -> None:
    team = _tenant(factory, "team")
    with pytest.raises(InvalidRequest) as err:
        usage.summary(factory, principal=team, since=None, by="model")
    assert err.value.param == "by" and "endpoint" in err.value.message
