"""API keys: generated once, stored as sha256, looked up by hash; revoked or expired keys
are refused. Listing, creating and revoking keys is `services.keys`."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import replace
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.db.engine import transaction
from modelfab.db.models import ApiKey, Tenant, UsageRecord
from modelfab.errors import Unauthenticated
from modelfab.ids import hash_secret, new_id, now
from modelfab.services.common import Principal

logger = logging.getLogger(__name__)

ADMIN_TENANT = "admin"
TOKEN_METERS = ("tokens_in", "tokens_out")
"""The meters a tenant's token budget counts."""


def generate_key() -> str:
    return "mf_" + secrets.token_urlsafe(32)


def add_key(
    session: Session,
    tenant_id: str,
    role: str,
    *,
    name: str | None = None,
    expires_at: float | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key for `tenant_id`; returns its row and its plaintext, which is never
    stored. The caller checked `role`, `name` and `expires_at`."""
    key = generate_key()
    row = ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        key_hash=hash_secret(key),
        prefix=key[:8],
        role=role,
        name=name,
        created_at=now(),
        expires_at=expires_at,
    )
    session.add(row)
    return row, key


def authenticate(factory: sessionmaker[Session], key: str | None) -> Principal:
    """Resolve a bearer key to its principal; raises Unauthenticated for a missing, unknown,
    revoked or expired key (the message says which, and what to do)."""
    if not key:
        raise Unauthenticated(
            "missing API key: send 'Authorization: Bearer <key>' (set MODELFAB_API_KEY for the CLI)"
        )
    with factory() as session:
        row = session.execute(
            select(ApiKey, Tenant)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.key_hash == hash_secret(key))
        ).first()
    if row is None:
        raise Unauthenticated("invalid API key: check MODELFAB_API_KEY or ask an admin for a key")
    api_key, tenant = row
    _check_usable(api_key)
    return Principal(
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        role=api_key.role,
        key_id=api_key.id,
        rate_limit_rps=tenant.rate_limit_rps,
        expires_at=api_key.expires_at,
        tokens_per_minute=tenant.tokens_per_minute,
        tokens_budget=tenant.tokens_budget,
    )


def gateway_caller(factory: sessionmaker[Session], key: str | None) -> Principal:
    """`authenticate`, plus the tenant's metered tokens (in + out) when it has a token budget:
    what the gateway loads, and caches, per key. Raises as `authenticate` does."""
    principal = authenticate(factory, key)
    if principal.tokens_budget is None:
        return principal
    with factory() as session:
        used = session.scalar(
            select(func.coalesce(func.sum(UsageRecord.quantity), 0.0)).where(
                UsageRecord.tenant_id == principal.tenant_id,
                UsageRecord.meter.in_(TOKEN_METERS),
            )
        )
    return replace(principal, tokens_used=int(used or 0))


def _check_usable(api_key: ApiKey) -> None:
    """Raise Unauthenticated when the key was revoked or has expired. Telling which is safe:
    only the holder of the secret gets this far."""
    ask = (
        "ask an admin of your tenant for a new key (`modelfab keys create`) "
        "and set MODELFAB_API_KEY to it"
    )
    if api_key.revoked_at is not None:
        raise Unauthenticated(f"API key {api_key.id} ({api_key.prefix}...) was revoked; {ask}")
    if api_key.expires_at is not None and api_key.expires_at <= now():
        raise Unauthenticated(f"API key {api_key.id} ({api_key.prefix}...) has expired; {ask}")


def bootstrap_admin(factory: sessionmaker[Session], key_path: Path) -> str | None:
    """Create the admin tenant and its key on first start.

    Returns the new key (also written to `key_path`, mode 0600), or None when an admin
    tenant exists already."""
    with transaction(factory) as session:
        if session.scalar(select(Tenant).where(Tenant.name == ADMIN_TENANT)) is not None:
            return None
        tenant = Tenant(id=new_id("ten"), name=ADMIN_TENANT, weight=1.0, created_at=now())
        session.add(tenant)
        session.flush()
        _, key = add_key(session, tenant.id, "admin", name="bootstrap")
        _write_secret(key_path, key)
    logger.info("created the admin tenant; its key is in %s", key_path)
    return key


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    os.replace(tmp, path)
