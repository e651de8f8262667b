"""API keys: generated once, stored as sha256, looked up by hash."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.db.engine import transaction
from modelfab.db.models import ApiKey, Tenant
from modelfab.errors import Unauthenticated
from modelfab.ids import hash_secret, new_id, now
from modelfab.services.common import Principal

logger = logging.getLogger(__name__)

ADMIN_TENANT = "admin"


def generate_key() -> str:
    return "mf_" + secrets.token_urlsafe(32)


def add_key(session: Session, tenant_id: str, role: str) -> str:
    """Store a new key for `tenant_id` and return its plaintext, which is never stored."""
    key = generate_key()
    session.add(
        ApiKey(
            id=new_id("key"),
            tenant_id=tenant_id,
            key_hash=hash_secret(key),
            prefix=key[:8],
            role=role,
            created_at=now(),
        )
    )
    return key


def authenticate(factory: sessionmaker[Session], key: str | None) -> Principal:
    """Resolve a bearer key to its principal; raises Unauthenticated for a missing or bad key."""
    if not key:
        raise Unauthenticated(
            "missing API key: send 'Authorization: Bearer <key>' (set MODELFAB_API_KEY for the CLI)"
        )
    with factory() as session:
        row = session.execute(
            select(ApiKey, Tenant)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.key_hash == hash_secret(key), ApiKey.revoked_at.is_(None))
        ).first()
    if row is None:
        raise Unauthenticated("invalid API key: check MODELFAB_API_KEY or ask an admin for a key")
    api_key, tenant = row
    return Principal(
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        role=api_key.role,
        key_id=api_key.id,
        rate_limit_rps=tenant.rate_limit_rps,
    )


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
        key = add_key(session, tenant.id, "admin")
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
