from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from modelfab.api.deps import Caller, Ctx
from modelfab.services import usage
from modelfab.services.pool import pool_view

router = APIRouter(tags=["pool"])


@router.get("/pool")
def pool(ctx: Ctx, principal: Caller) -> dict[str, Any]:
    return pool_view(ctx.factory, principal)


@router.get("/usage")
def usage_summary(
    ctx: Ctx,
    principal: Caller,
    since: float | None = None,
    by: str = "meter",
    tenant: str | None = None,
) -> dict[str, Any]:
    rows = usage.summary(ctx.factory, principal=principal, since=since, by=by, tenant=tenant)
    return {"object": "list", "data": rows}
