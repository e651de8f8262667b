"""Tenants and their quotas. Every function here is for admins; routers check the role.
A tenant's keys are `services.keys`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelfab.db.engine import transaction
from modelfab.db.models import Tenant
from modelfab.errors import Conflict, InvalidRequest, NotFound
from modelfab.ids import new_id, now
from modelfab.schemas import tenants as wire
from modelfab.schemas.tenants import ROLES
from modelfab.services import idempotency
from modelfab.services.auth import add_key
from modelfab.services.common import check_name
from modelfab.services.idempotency import Idempotency


@dataclass(frozen=True)
class Quota:
    max_gpus: float | None = None
    max_cpus: float | None = None
    gpu_hours_budget: float | None = None
    weight: float = 1.0
    rate_limit_rps: float | None = None  # endpoint requests per second, per key
    tokens_per_minute: int | None = None  # language-model tokens per minute, per key
    tokens_budget: int | None = None  # tokens in + out over the tenant's life

    def check(self) -> None:
        for param in ("max_gpus", "max_cpus", "gpu_hours_budget", "tokens_budget"):
            value = getattr(self, param)
            if value is not None and value < 0:
                raise InvalidRequest(f"{param} must be >= 0, got {value}", param=param)
        if self.rate_limit_rps is not None and not self.rate_limit_rps > 0:
            raise InvalidRequest(
                f"rate_limit_rps must be > 0, got {self.rate_limit_rps}", param="rate_limit_rps"
            )
        if self.tokens_per_minute is not None and self.tokens_per_minute < 1:
            raise InvalidRequest(
                f"tokens_per_minute must be >= 1, got {self.tokens_per_minute}",
                param="tokens_per_minute",
            )
        if self.weight is None or not self.weight > 0:
            raise InvalidRequest(f"weight must be > 0, got {self.weight}", param="weight")


def tenant_view(t: Tenant) -> wire.Tenant:
    return wire.Tenant(
        id=t.id,
        name=t.name,
        max_gpus=t.max_gpus,
        max_cpus=t.max_cpus,
        gpu_hours_budget=t.gpu_hours_budget,
        weight=t.weight,
        rate_limit_rps=t.rate_limit_rps,
        tokens_per_minute=t.tokens_per_minute,
        tokens_budget=t.tokens_budget,
        created_at=t.created_at,
    )


def create_tenant(
    factory: sessionmaker[Session],
    *,
    name: str,
    quota: Quota,
    role: str = "member",
    idem: Idempotency | None = None,
) -> wire.TenantCreated:
    """Create a tenant with its first key; the key appears in the answer and nowhere else
    (and in the answer a retry with the same `idem` gets, within its lifetime)."""
    idem = idem.for_body({"name": name, "role": role, **quota.__dict__}) if idem else None
    check_name(name)
    quota.check()
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", param="role")
    try:
        with transaction(factory) as session:
            first = idempotency.replay(session, idem, wire.TenantCreated)
            if first is not None:
                return first
            tenant = Tenant(id=new_id("ten"), name=name, created_at=now(), **quota.__dict__)
            session.add(tenant)
            session.flush()
            _, key = add_key(session, tenant.id, role, name="first")
            out = wire.TenantCreated(**tenant_view(tenant).model_dump(), api_key=key)
            idempotency.record(session, idem, 201, out)
    except IntegrityError as exc:
        raise Conflict(f"tenant {name!r} exists already", param="name") from exc
    return out


def list_tenants(factory: sessionmaker[Session]) -> list[wire.Tenant]:
    with factory() as session:
        return [tenant_view(t) for t in session.scalars(select(Tenant).order_by(Tenant.name))]


def get_tenant(factory: sessionmaker[Session], *, name: str) -> wire.Tenant:
    with factory() as session:
        return tenant_view(load_tenant(session, name))


def update_quota(
    factory: sessionmaker[Session], *, name: str, changes: dict[str, Any]
) -> wire.Tenant:
    with transaction(factory) as session:
        tenant = load_tenant(session, name)
        merged = {k: getattr(tenant, k) for k in Quota.__dataclass_fields__}
        merged.update(changes)
        Quota(**merged).check()
        for key, value in changes.items():
            setattr(tenant, key, value)
        return tenant_view(tenant)


def load_tenant(session: Session, name: str) -> Tenant:
    """The tenant named `name`; raises NotFound."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise NotFound(f"no tenant named {name!r}", param="name")
    return tenant
