"""replica secrets: the bearer token a replica requires, announced with its URL

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("endpoint_replicas") as batch_op:
        batch_op.add_column(sa.Column("secret", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoint_replicas") as batch_op:
        batch_op.drop_column("secret")
