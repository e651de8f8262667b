from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from modelfab.api.deps import Admin, Caller, Ctx
from modelfab.api.schemas import KeyCreate, TenantCreate, TenantUpdate
from modelfab.services import tenants
from modelfab.services.tenants import Quota

router = APIRouter(tags=["tenants"])


@router.get("/me")
def me(principal: Caller) -> dict[str, Any]:
    return {"object": "principal", "tenant": principal.tenant_name, "role": principal.role}


@router.post("/tenants", status_code=201)
def create_tenant(body: TenantCreate, ctx: Ctx, _: Admin) -> dict[str, Any]:
    quota = Quota(
        body.max_gpus, body.max_cpus, body.gpu_hours_budget, body.weight, body.rate_limit_rps
    )
    return tenants.create_tenant(ctx.factory, name=body.name, quota=quota, role=body.role)


@router.get("/tenants")
def list_tenants(ctx: Ctx, _: Admin) -> dict[str, Any]:
    return {"object": "list", "data": tenants.list_tenants(ctx.factory)}


@router.get("/tenants/{name}")
def get_tenant(name: str, ctx: Ctx, _: Admin) -> dict[str, Any]:
    return tenants.get_tenant(ctx.factory, name=name)


@router.patch("/tenants/{name}")
def update_tenant(name: str, body: TenantUpdate, ctx: Ctx, _: Admin) -> dict[str, Any]:
    changes = body.model_dump(include=body.model_fields_set)
    return tenants.update_quota(ctx.factory, name=name, changes=changes)


@router.post("/tenants/{name}/keys", status_code=201)
def create_key(name: str, body: KeyCreate, ctx: Ctx, _: Admin) -> dict[str, Any]:
    return tenants.create_key(ctx.factory, name=name, role=body.role)
