"""Usage as tenants and admins read it (records are written by `modelfab.metering`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.db.models import Tenant, UsageRecord
from modelfab.errors import InvalidRequest
from modelfab.services.common import Principal

GROUPINGS = ("meter", "job", "tenant")


def summary(
    factory: sessionmaker[Session],
    *,
    principal: Principal,
    since: float | None,
    by: str,
    tenant: str | None = None,
) -> list[dict[str, Any]]:
    """Totals per tenant and meter, split further `by` job when asked. Members see their own."""
    if by not in GROUPINGS:
        raise InvalidRequest(f"by must be one of {', '.join(GROUPINGS)}", param="by")
    cols = [Tenant.name, UsageRecord.meter]
    if by == "job":
        cols += [UsageRecord.ref_type, UsageRecord.ref_id]
    stmt = (
        select(*cols, func.sum(UsageRecord.quantity), func.count())
        .join(Tenant, Tenant.id == UsageRecord.tenant_id)
        .group_by(*cols)
        .order_by(*cols)
    )
    if since is not None:
        stmt = stmt.where(UsageRecord.created_at >= since)
    if not principal.is_admin:
        stmt = stmt.where(UsageRecord.tenant_id == principal.tenant_id)
    elif tenant:
        stmt = stmt.where(Tenant.name == tenant)
    with factory() as session:
        rows = session.execute(stmt).all()
    return [_row(by, r) for r in rows]


def _row(by: str, r: Any) -> dict[str, Any]:
    out = {"tenant": r[0], "meter": r[1], "quantity": r[-2], "records": r[-1]}
    if by == "job":
        out.update(ref_type=r[2], ref_id=r[3])
    return out
