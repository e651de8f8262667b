"""endpoint rollouts: a target model version the controller warms before switching

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints") as batch_op:
        batch_op.add_column(sa.Column("target_ref", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("target_version_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("rollout", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("rollout_error", sa.JSON(), nullable=True))
        batch_op.create_foreign_key(
            "fk_endpoints_target_version_id",
            "model_versions",
            ["target_version_id"],
            ["id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch_op:
        batch_op.drop_constraint("fk_endpoints_target_version_id", type_="foreignkey")
        batch_op.drop_column("rollout_error")
        batch_op.drop_column("rollout")
        batch_op.drop_column("target_version_id")
        batch_op.drop_column("target_ref")
