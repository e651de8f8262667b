"""Idempotency keys: a create retried with the same `Idempotency-Key` answers as the first
time did and does nothing again.

A key belongs to the caller's tenant (another tenant's identical key is independent) and is
kept `ttl_s` seconds. A create uses it in two steps:

- `replay(session, idem, Model)` before the work: the stored answer, or None; raises
  Conflict `idempotency_key_reused` when the key came with another request.
- `record(session, idem, status, answer)` in the create's own transaction, so the work and
  its record commit together or not at all. When two requests with one key race, the
  unique (tenant_id, key) constraint lets one commit; the other gets Conflict
  `idempotency_key_in_use` and its work is rolled back.

Only successful answers are kept: a create that failed may be retried with the same key.
Some answers hold a secret (a new tenant's or key's `api_key`), so a record is sealed with
the client's key: the table holds a sha256 of the key and the answer encrypted (Fernet) under
a key derived from it, readable only by a retry that presents the key again.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from cryptography.fernet import Fernet
from pydantic import BaseModel
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelfab.db.models import IdempotencyKey
from modelfab.errors import Conflict, InvalidRequest
from modelfab.ids import now
from modelfab.schemas.limits import MAX_IDEMPOTENCY_KEY_CHARS

HEADER = "Idempotency-Key"
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Idempotency:
    """One create's key. `route` is "METHOD PATH"; `fingerprint` is set by `for_body`."""

    tenant_id: str
    key: str
    route: str
    ttl_s: float
    fingerprint: str = ""

    def for_body(self, body: Any) -> Idempotency:
        """This key bound to the request: sha256 of the route and the canonical JSON of
        `body` (what the create was asked to do; for uploads the file's sha256)."""
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
        digest = hashlib.sha256(f"{self.route}\n{canonical}".encode()).hexdigest()
        return replace(self, fingerprint=digest)


def check_key(key: str) -> str:
    """`key` when it is 1 to MAX_IDEMPOTENCY_KEY_CHARS printable ASCII characters; raises
    InvalidRequest (422) otherwise."""
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS or not all(" " <= c <= "~" for c in key):
        raise InvalidRequest(
            f"the {HEADER} header must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII "
            "characters; send a fresh random one (a UUID) per create",
            param=HEADER,
        )
    return key


def replay(session: Session, idem: Idempotency | None, model: type[M]) -> M | None:
    """The answer stored for `idem` (bound with `for_body`), or None when there is none or
    it expired. Raises Conflict `idempotency_key_reused` when the key was used with another
    request."""
    if idem is None:
        return None
    row = session.get(IdempotencyKey, (idem.tenant_id, _digest(idem.key)))
    if row is None or row.created_at < now() - idem.ttl_s:
        return None
    if row.fingerprint != idem.fingerprint:
        raise Conflict(
            f"this {HEADER} was used with another request; send a fresh key for a new create",
            param=HEADER,
            code="idempotency_key_reused",
        )
    return model.model_validate(_open(idem.key, row.response))


def record(session: Session, idem: Idempotency | None, status: int, answer: BaseModel) -> None:
    """Store `answer` for `idem` in the caller's transaction (flushed here), dropping the
    tenant's expired records. Raises Conflict `idempotency_key_in_use` when a concurrent
    request with the key got there first; the caller's transaction must then roll back
    (raising out of it does)."""
    if idem is None:
        return
    session.flush()  # the create's own rows first: their conflicts are theirs to report
    at = now()
    # The tenant's expired records go here, this key's among them: no sweeper needed.
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.tenant_id == idem.tenant_id,
            IdempotencyKey.created_at < at - idem.ttl_s,
        )
    )
    session.add(
        IdempotencyKey(
            tenant_id=idem.tenant_id,
            key=_digest(idem.key),
            fingerprint=idem.fingerprint,
            status=status,
            response=_seal(idem.key, answer.model_dump(mode="json")),
            created_at=at,
        )
    )
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(
            f"a request with this {HEADER} is in progress; retry it once that one answered",
            param=HEADER,
            code="idempotency_key_in_use",
        ) from exc


def _digest(key: str) -> str:
    """What the table keeps of a client's key: its sha256, never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()


def _fernet(key: str) -> Fernet:
    """Authenticated encryption under a key derived from the client's idempotency key."""
    secret = hashlib.sha256(b"modelfab-idempotency\0" + key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(secret))


def _seal(key: str, answer: dict[str, Any]) -> dict[str, str]:
    """`answer` encrypted (Fernet) under the client's key."""
    plain = json.dumps(answer, separators=(",", ":")).encode()
    return {"sealed": _fernet(key).encrypt(plain).decode()}


def _open(key: str, record: dict[str, Any]) -> Any:
    """The answer `_seal` stored, with the key the client presented again."""
    return json.loads(_fernet(key).decrypt(record["sealed"].encode()))
