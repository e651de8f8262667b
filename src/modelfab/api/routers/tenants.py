from __future__ import annotations

from fastapi import APIRouter

from modelfab.api.deps import Admin, Caller, Ctx
from modelfab.api.idempotency import IdemKey
from modelfab.schemas.common import BODY, ERRORS, List, errors
from modelfab.schemas.tenants import (
    ApiKey,
    ApiKeyCreated,
    KeyCreate,
    Me,
    Tenant,
    TenantCreate,
    TenantCreated,
    TenantUpdate,
)
from modelfab.services import tenants
from modelfab.services.tenants import Quota

router = APIRouter(tags=["tenants"], responses=ERRORS)


@router.get("/me")
def me(principal: Caller) -> Me:
    return Me(tenant=principal.tenant_name, role=principal.role)


@router.post("/tenants", status_code=201, responses={**BODY, **errors(403, 409)})
def create_tenant(body: TenantCreate, ctx: Ctx, _: Admin, idem: IdemKey) -> TenantCreated:
    quota = Quota(
        max_gpus=body.max_gpus,
        max_cpus=body.max_cpus,
        gpu_hours_budget=body.gpu_hours_budget,
        weight=body.weight,
        rate_limit_rps=body.rate_limit_rps,
        tokens_per_minute=body.tokens_per_minute,
        tokens_budget=body.tokens_budget,
    )
    return tenants.create_tenant(
        ctx.factory, name=body.name, quota=quota, role=body.role, idem=idem
    )


@router.get("/tenants", responses=errors(403))
def list_tenants(ctx: Ctx, _: Admin) -> List[Tenant]:
    return List(data=tenants.list_tenants(ctx.factory))


@router.get("/tenants/{name}", responses=errors(403, 404))
def get_tenant(name: str, ctx: Ctx, _: Admin) -> Tenant:
    return tenants.get_tenant(ctx.factory, name=name)


@router.patch("/tenants/{name}", responses={**BODY, **errors(403, 404)})
def update_tenant(name: str, body: TenantUpdate, ctx: Ctx, _: Admin) -> Tenant:
    changes = body.model_dump(include=body.model_fields_set)
    return tenants.update_quota(ctx.factory, name=name, changes=changes)


# Keys: admins for any tenant, a member for its own (the service checks; others are 404).


@router.post("/tenants/{name}/keys", status_code=201, responses={**BODY, **errors(403, 404, 409)})
def create_key(
    name: str, body: KeyCreate, ctx: Ctx, principal: Caller, idem: IdemKey
) -> ApiKeyCreated:
    """A new key; its secret is in this answer and never again."""
    return ctx.keys.create(principal, tenant=name, body=body, idem=idem)


@router.get("/tenants/{name}/keys", responses=errors(404))
def list_keys(name: str, ctx: Ctx, principal: Caller) -> List[ApiKey]:
    """The tenant's keys, revoked and expired ones too; never their secrets."""
    return List(data=ctx.keys.list(principal, tenant=name))


@router.delete("/tenants/{name}/keys/{key_id}", responses=errors(403, 404))
def revoke_key(name: str, key_id: str, ctx: Ctx, principal: Caller) -> ApiKey:
    """Revoke a key, at once (idempotent)."""
    return ctx.keys.revoke(principal, tenant=name, key_id=key_id)
