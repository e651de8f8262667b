"""Usage as tenants and admins read it (records are written by `modelfab.metering`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from modelfab.db.models import Endpoint, Tenant, UsageRecord
from modelfab.errors import InvalidRequest
from modelfab.schemas.usage import (
    GROUPINGS,
    AnyUsageRow,
    EndpointUsageRow,
    JobUsageRow,
    UsageRow,
)
from modelfab.services.common import Principal

ENDPOINT_REF = "endpoint"  # the ref_type of endpoint usage (requests, items, replica_seconds)
Column = InstrumentedAttribute[Any] | ColumnElement[Any]


def summary(
    factory: sessionmaker[Session],
    *,
    principal: Principal,
    since: float | None,
    by: str,
    tenant: str | None = None,
) -> list[AnyUsageRow]:
    """Totals per tenant and meter, split further `by` job (any ref) or endpoint (endpoint
    usage only) when asked. Members see their own tenant's. Raises InvalidRequest for an
    unknown `by`."""
    if by not in GROUPINGS:
        raise InvalidRequest(f"by must be one of {', '.join(GROUPINGS)}", param="by")
    stmt = _grouped(by)
    if since is not None:
        stmt = stmt.where(UsageRecord.created_at >= since)
    if not principal.is_admin:
        stmt = stmt.where(UsageRecord.tenant_id == principal.tenant_id)
    elif tenant:
        stmt = stmt.where(Tenant.name == tenant)
    with factory() as session:
        rows = session.execute(stmt).all()
    return [_row(by, r) for r in rows]


def _grouped(by: str) -> Select[Any]:
    """SELECT the group's columns..., sum(quantity), count(*) grouped by them."""
    cols: list[Column] = [Tenant.name, UsageRecord.meter]
    order = cols
    if by == "job":
        cols = order = [*cols, UsageRecord.ref_type, UsageRecord.ref_id]
    elif by == "endpoint":
        # The name where the endpoint still exists; a deleted one's rows keep their id.
        cols = [Tenant.name, Endpoint.name, UsageRecord.ref_id, UsageRecord.meter]
        shown = func.coalesce(Endpoint.name, UsageRecord.ref_id)
        order = [Tenant.name, shown, UsageRecord.ref_id, UsageRecord.meter]
    stmt = (
        select(*cols, func.sum(UsageRecord.quantity), func.count())
        .join(Tenant, Tenant.id == UsageRecord.tenant_id)
        .group_by(*cols)
        .order_by(*order)
    )
    if by == "endpoint":
        stmt = stmt.outerjoin(Endpoint, Endpoint.id == UsageRecord.ref_id).where(
            UsageRecord.ref_type == ENDPOINT_REF
        )
    return stmt


def _row(by: str, r: Any) -> AnyUsageRow:
    if by == "endpoint":
        tenant, name, endpoint_id, meter = r[:4]
        return EndpointUsageRow(
            tenant=tenant,
            endpoint=name or endpoint_id,
            endpoint_id=endpoint_id,
            meter=meter,
            quantity=r[-2],
            records=r[-1],
        )
    if by == "job":
        return JobUsageRow(
            tenant=r[0], meter=r[1], ref_type=r[2], ref_id=r[3], quantity=r[-2], records=r[-1]
        )
    return UsageRow(tenant=r[0], meter=r[1], quantity=r[-2], records=r[-1])
