"""Alembic environment: runs on a connection handed in by `modelfab.db.migrate`, or on the
URL in the config when run through the `alembic` command."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from modelfab.db.engine import make_engine
from modelfab.db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
