"""Writing usage records. A record is written once: its idempotency key makes a retried
write a no-op, so metering never double-counts."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from modelfab.db.models import UsageRecord
from modelfab.ids import now

METERS = (
    "gpu_seconds",
    "cpu_seconds",
    "requests",
    "items",
    "tokens_in",
    "tokens_out",
    "replica_seconds",
    "tokens_trained",
)


def record(
    session: Session,
    *,
    tenant_id: str,
    meter: str,
    quantity: float,
    ref_type: str,
    ref_id: str,
    key: str,
    at: float | None = None,
) -> None:
    """Add a usage record inside the caller's transaction; a second call with `key` adds nothing."""
    if meter not in METERS:
        raise ValueError(f"unknown meter {meter!r}")
    values = dict(
        tenant_id=tenant_id,
        created_at=at if at is not None else now(),
        meter=meter,
        quantity=quantity,
        ref_type=ref_type,
        ref_id=ref_id,
        idempotency_key=key,
    )
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert(UsageRecord).values(**values)
    session.execute(stmt.on_conflict_do_nothing(index_elements=["idempotency_key"]))
