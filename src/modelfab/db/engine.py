"""Engine and sessions. SQLite runs in WAL mode with `BEGIN IMMEDIATE` so that two writers
queue on the busy timeout instead of failing on a lock upgrade; PostgreSQL runs as is."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from modelfab.errors import InvalidRequest

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for `url`; creates the SQLite file's folder when needed."""
    if url.startswith("sqlite"):
        return _sqlite_engine(url, **kwargs)
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return _refusing_nul(create_engine(url, **kwargs))


def _sqlite_engine(url: str, **kwargs: Any) -> Engine:
    path = url.split(":///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("check_same_thread", False)
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so BEGIN IMMEDIATE is ours to emit.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return _refusing_nul(engine)


def _refusing_nul(engine: Engine) -> Engine:
    """Refuses (InvalidRequest, 422) any statement binding text with a NUL character, in one
    place for every query: PostgreSQL cannot store or compare such text (psycopg raises
    DataError, which would be a 500) and SQLite can, so without this the same request would
    answer differently on the two backends."""

    @event.listens_for(engine, "before_cursor_execute")
    def _no_nul(
        _conn: Any, _cursor: Any, _statement: str, parameters: Any, _context: Any, _many: bool
    ) -> None:
        if _has_nul(parameters):
            raise InvalidRequest(
                "text may not contain NUL (0x00) characters; remove them from the request"
            )

    return engine


def _has_nul(parameters: Any) -> bool:
    """Whether any str among `parameters` (a dict or sequence of values, or, executing
    many, a sequence of those) holds NUL."""
    if isinstance(parameters, str):
        return "\x00" in parameters
    if isinstance(parameters, dict):
        return any(_has_nul(v) for v in parameters.values())
    if isinstance(parameters, list | tuple):
        return any(_has_nul(v) for v in parameters)
    return False


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back on any exception."""
    with factory() as session, session.begin():
        yield session
