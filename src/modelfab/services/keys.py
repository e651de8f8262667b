"""A tenant's API keys: create (the secret answered once), list, revoke.

Admins may do this for any tenant; a member only for its own tenant (another tenant
answers 404, as if it did not exist), only with member keys (creating or revoking an admin
key is 403).

A revocation takes effect at once in this process: the API authenticates every request
against the database, and after the revoke commits `on_key_revoked(key_id)` runs, which
the platform wires to the gateway's `forget_key` (its principal cache). With several
control-plane processes, the other processes' gateways learn nothing of it: there a revoked
key keeps predicting for at most `gateway.auth_ttl_s` seconds (the cache's lifetime). No
cache entry outlives a key's `expires_at`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from modelfab.db.engine import transaction
from modelfab.db.models import ApiKey, Tenant
from modelfab.errors import Conflict, Forbidden, InvalidRequest, NotFound
from modelfab.ids import now
from modelfab.schemas import tenants as wire
from modelfab.schemas.limits import MAX_KEY_LIFETIME_S
from modelfab.schemas.tenants import ROLES
from modelfab.services import idempotency
from modelfab.services.auth import add_key
from modelfab.services.common import Principal, check_name
from modelfab.services.idempotency import Idempotency
from modelfab.services.tenants import load_tenant

logger = logging.getLogger(__name__)


def key_view(key: ApiKey, tenant: str) -> wire.ApiKey:
    return wire.ApiKey(
        id=key.id,
        tenant=tenant,
        name=key.name,
        role=key.role,
        prefix=key.prefix,
        created_at=key.created_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
    )


class KeyService:
    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        on_key_revoked: Callable[[str], None] = lambda _key_id: None,
    ):
        """`on_key_revoked(key_id)` runs after each revoke committed (also a repeated one);
        it must not block."""
        self.factory = factory
        self.on_key_revoked = on_key_revoked

    def create(
        self,
        principal: Principal,
        *,
        tenant: str,
        body: wire.KeyCreate,
        idem: Idempotency | None = None,
    ) -> wire.ApiKeyCreated:
        """A new key of `tenant`; raises InvalidRequest (422), Forbidden (403, a member asking
        for an admin key), NotFound (404). A repeat with `idem` answers the first key."""
        idem = idem.for_body({"tenant": tenant, **body.model_dump(mode="json")}) if idem else None
        if body.role not in ROLES:
            raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", param="role")
        if body.role == "admin" and not principal.is_admin:
            raise Forbidden("only an admin key may create an admin key", param="role")
        if body.name is not None:
            check_name(body.name)
        expires_at = _expiry(body)
        with transaction(self.factory) as session:
            row = _visible_tenant(session, principal, tenant)
            first = idempotency.replay(session, idem, wire.ApiKeyCreated)
            if first is not None:
                return first
            key, secret = add_key(session, row.id, body.role, name=body.name, expires_at=expires_at)
            out = wire.ApiKeyCreated(**key_view(key, row.name).model_dump(), api_key=secret)
            idempotency.record(session, idem, 201, out)
        return out

    def list(self, principal: Principal, *, tenant: str) -> list[wire.ApiKey]:
        """All keys of `tenant`, revoked and expired ones too, oldest first."""
        with self.factory() as session:
            row = _visible_tenant(session, principal, tenant)
            keys = session.scalars(
                select(ApiKey).where(ApiKey.tenant_id == row.id).order_by(ApiKey.created_at)
            )
            return [key_view(k, row.name) for k in keys]

    def revoke(self, principal: Principal, *, tenant: str, key_id: str) -> wire.ApiKey:
        """Revoke a key of `tenant` (idempotent: a revoked key answers as it is). Refuses the
        last usable admin key (409): nobody could administer the platform after it."""
        with transaction(self.factory) as session:
            row = _visible_tenant(session, principal, tenant)
            key = session.scalar(
                select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant_id == row.id)
            )
            if key is None:
                raise NotFound(f"tenant {tenant!r} has no key {key_id!r}", param="key_id")
            if key.role == "admin" and not principal.is_admin:
                raise Forbidden("only an admin key may revoke an admin key", param="key_id")
            if key.revoked_at is None:
                if key.role == "admin":
                    _check_not_last_admin(session, key)
                key.revoked_at = now()
            view = key_view(key, row.name)
        self._notify(key_id)
        return view

    def _notify(self, key_id: str) -> None:
        try:
            self.on_key_revoked(key_id)
        except Exception:  # the revoke stands; caches expire within auth_ttl_s anyway
            logger.exception("on_key_revoked failed for key %s", key_id)


def _visible_tenant(session: Session, principal: Principal, name: str) -> Tenant:
    """The tenant named `name` if the caller may manage its keys; another tenant looks
    like no tenant to a member (404, nothing leaks)."""
    if not principal.is_admin and name != principal.tenant_name:
        raise NotFound(f"no tenant named {name!r}", param="name")
    return load_tenant(session, name)


def _expiry(body: wire.KeyCreate) -> float | None:
    """UNIX seconds when the new key stops working, or None."""
    if body.expires_at is not None and body.expires_in_s is not None:
        raise InvalidRequest("give expires_at or expires_in_s, not both", param="expires_at")
    if body.expires_in_s is not None:
        return now() + body.expires_in_s
    if body.expires_at is None:
        return None
    left = body.expires_at - now()
    if left <= 0:
        raise InvalidRequest(
            f"expires_at {body.expires_at:g} is in the past; give a future UNIX time "
            "or expires_in_s",
            param="expires_at",
        )
    if left > MAX_KEY_LIFETIME_S:
        raise InvalidRequest(
            f"expires_at is more than {MAX_KEY_LIFETIME_S / 86400:g} days away; "
            "give a nearer time, or none for a key that does not expire",
            param="expires_at",
        )
    return body.expires_at


def _check_not_last_admin(session: Session, key: ApiKey) -> None:
    t = now()
    others = session.scalar(
        select(func.count())
        .select_from(ApiKey)
        .where(
            ApiKey.role == "admin",
            ApiKey.id != key.id,
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > t),
        )
    )
    if not others:
        raise Conflict(
            f"key {key.id} is the last usable admin key; create another first "
            "(`modelfab keys create --tenant admin --name NAME --role admin`) "
            "and revoke this one with it",
            param="key_id",
        )
