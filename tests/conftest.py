"""Shared fixtures. Database tests run against SQLite always and against PostgreSQL too
when MODELFAB_TEST_DATABASE_URL is set (`.ci/run` sets it when a server answers).

The schema is built once per backend per session (through the Alembic migrations, so they
are tested too); each test starts from empty tables."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from modelfab.api.app import create_app
from modelfab.compute.executors.local.process import find_workers, kill_tree
from modelfab.compute.pool import detect_node, register_node
from modelfab.db import migrate
from modelfab.db.engine import make_engine, make_sessionmaker
from modelfab.db.models import Base
from modelfab.server import Platform, build_context
from modelfab.services.auth import bootstrap_admin
from modelfab.settings import ServerSettings

PG_URL = os.environ.get("MODELFAB_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `one_backend` run on SQLite only (reported as deselected elsewhere):
    what they test (a model's training, a client's protocol) does not change with the
    database, and they are slow."""

    def other_backend(item: pytest.Item) -> bool:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("db_url") if callspec is not None else None
        return item.get_closest_marker("one_backend") is not None and backend not in (
            None,
            "sqlite",
        )

    dropped = [item for item in items if other_backend(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not other_backend(item)]


@pytest.fixture(scope="session", params=BACKENDS)
def db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'modelfab.db'}"
        return
    yield from _fresh_pg_database()


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all, per backend: for tests of the migrations themselves."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    yield from _fresh_pg_database()


def _fresh_pg_database() -> Iterator[str]:
    """A throwaway database on the server of MODELFAB_TEST_DATABASE_URL, dropped afterwards."""
    assert PG_URL
    name = f"modelfab_test_{secrets.token_hex(4)}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base, _, _ = PG_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    migrate.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory over empty tables."""
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    return make_sessionmaker(engine)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> ServerSettings:
    return ServerSettings(
        home=tmp_path / "home",
        database_url=db_url,
        fake_gpus=2,
        cpus=8,
        port=0,
        scheduler_interval_s=0.05,
        cancel_grace_s=5.0,
    )


class Api:
    """An in-process API client (no sockets) with the admin key at hand."""

    def __init__(self, client: TestClient, admin_key: str, node_id: str):
        self.client = client
        self.admin_key = admin_key
        self.node_id = node_id

    def call(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> Any:
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.client.request(method, f"/v1{path}", headers=headers, **kwargs)

    def create_tenant(self, name: str | None = None, **quota: Any) -> dict[str, Any]:
        """A new tenant (random name unless given); the answer includes its `api_key`."""
        body = {"name": name or f"team-{secrets.token_hex(3)}", **quota}
        resp = self.call("POST", "/tenants", self.admin_key, json=body)
        assert resp.status_code == 201, resp.text
        return resp.json()  # type: ignore[no-any-return]


@pytest.fixture
def api(settings: ServerSettings, factory: sessionmaker[Session]) -> Iterator[Api]:
    """The API over a node with 2 fake GPUs and 8 CPU slots; no scheduler runs."""
    settings.home.mkdir(parents=True, exist_ok=True)
    node = detect_node(settings.home, fake_gpus=settings.fake_gpus, cpus=settings.cpus)
    register_node(factory, node, executor="local")
    admin_key = bootstrap_admin(factory, settings.admin_key_path)
    assert admin_key
    ctx = build_context(settings, factory, None, node_ids=[node.id])
    with TestClient(create_app(ctx), raise_server_exceptions=False) as client:
        yield Api(client, admin_key, node.id)


@pytest.fixture
def platform(settings: ServerSettings, factory: sessionmaker[Session]) -> Iterator[Platform]:
    """A real control plane in this process on a loopback port: API, scheduler thread and
    the local executor, whose workers are real subprocesses. Stopped (and its workers
    killed) at the end."""
    plat = Platform(settings)
    started = plat.start()
    assert started.admin_key
    try:
        yield plat
    finally:
        plat.stop()
        assert plat.node is not None
        for proc in find_workers(plat.node.id).values():
            kill_tree(proc.pid, grace_s=1.0)
