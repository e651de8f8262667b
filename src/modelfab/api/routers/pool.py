from __future__ import annotations

from fastapi import APIRouter, Query

from modelfab.api.deps import Caller, Ctx
from modelfab.schemas.common import ERRORS, List
from modelfab.schemas.pool import Pool
from modelfab.schemas.usage import GROUPINGS, AnyUsageRow
from modelfab.services import usage
from modelfab.services.pool import pool_view

router = APIRouter(tags=["pool"], responses=ERRORS)


@router.get("/pool")
def pool(ctx: Ctx, principal: Caller) -> Pool:
    return pool_view(ctx.factory, principal)


@router.get("/usage")
def usage_summary(
    ctx: Ctx,
    principal: Caller,
    since: float | None = Query(None, allow_inf_nan=False, description="UNIX seconds."),
    by: str = Query("meter", json_schema_extra={"enum": list(GROUPINGS)}),
    tenant: str | None = None,
) -> List[AnyUsageRow]:
    """Rows of `UsageRow`, with ref_type and ref_id for `by=job`, and endpoint and
    endpoint_id for `by=endpoint`."""
    rows = usage.summary(ctx.factory, principal=principal, since=since, by=by, tenant=tenant)
    return List(data=rows)
