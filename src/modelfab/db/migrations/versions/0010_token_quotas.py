"""tenants: token quotas (tokens per minute per key, a lifetime token budget)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 19:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.add_column(sa.Column("tokens_per_minute", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("tokens_budget", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.drop_column("tokens_budget")
        batch_op.drop_column("tokens_per_minute")
