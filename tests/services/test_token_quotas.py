"""Token quotas in the state store: migration 0010 on both backends, and the caller the
gateway loads (its tenant's quotas and metered tokens)."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session, sessionmaker

from modelfab import metering
from modelfab.db import migrate
from modelfab.db.engine import make_engine, transaction
from modelfab.errors import Unauthenticated
from modelfab.services.auth import authenticate, gateway_caller
from modelfab.services.tenants import Quota, create_tenant


def _migrate(url: str, revision: str, *, down: bool = False) -> None:
    engine = make_engine(url)
    try:
        cfg = migrate.alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, revision)
    finally:
        engine.dispose()


def _tenant_columns(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns("tenants")}
    finally:
        engine.dispose()


def test_0010_adds_the_token_quotas_as_unlimited_and_downgrades(empty_db_url: str) -> None:
    _migrate(empty_db_url, "0009")
    engine = make_engine(empty_db_url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO tenants (id, name, weight, created_at) VALUES ('t1', 'a', 1, 0)")
        )
    _migrate(empty_db_url, "0010")
    with engine.begin() as conn:
        row = conn.execute(text("SELECT tokens_per_minute, tokens_budget FROM tenants")).one()
        assert tuple(row) == (None, None)  # existing tenants stay unlimited
        conn.execute(
            text("UPDATE tenants SET tokens_per_minute = 90000, tokens_budget = :b"), {"b": 10**15}
        )
        assert conn.execute(text("SELECT tokens_budget FROM tenants")).scalar() == 10**15
    engine.dispose()
    _migrate(empty_db_url, "0009", down=True)
    assert not {"tokens_per_minute", "tokens_budget"} & _tenant_columns(empty_db_url)
    _migrate(empty_db_url, "head")
    assert {"tokens_per_minute", "tokens_budget"} <= _tenant_columns(empty_db_url)


def _meter(factory: sessionmaker[Session], tenant_id: str, meter: str, qty: float) -> None:
    with transaction(factory) as session:
        metering.record(
            session,
            tenant_id=tenant_id,
            meter=meter,
            quantity=qty,
            ref_type="endpoint",
            ref_id="ep_1",
            key=f"{tenant_id}:{meter}:{qty}",
        )


def test_the_gateway_caller_carries_the_quotas_and_the_metered_tokens(
    factory: sessionmaker[Session],
) -> None:
    budgeted = create_tenant(
        factory, name="chat", quota=Quota(tokens_per_minute=600, tokens_budget=1000)
    )
    unbudgeted = create_tenant(factory, name="free", quota=Quota(tokens_per_minute=5))
    for meter, qty in (("tokens_in", 120), ("tokens_out", 30), ("requests", 7)):
        _meter(factory, budgeted.id, meter, qty)
        _meter(factory, unbudgeted.id, meter, qty)
    caller = gateway_caller(factory, budgeted.api_key)
    assert (caller.tokens_per_minute, caller.tokens_budget, caller.tokens_used) == (600, 1000, 150)
    assert authenticate(factory, budgeted.api_key).tokens_used == 0  # the API does not sum
    assert gateway_caller(factory, unbudgeted.api_key).tokens_used == 0  # nothing to check
    with pytest.raises(Unauthenticated):
        gateway_caller(factory, "mf_not-a-key")
