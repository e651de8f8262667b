"""model versions: a job may register several models (one version per job and model)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-19 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0002 created the unique constraint on job_id without a name: SQLite's batch mode finds it
# by this convention; PostgreSQL named it <table>_<column>_key.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    old = "uq_model_versions_job_id" if sqlite else "model_versions_job_id_key"
    with op.batch_alter_table("model_versions", naming_convention=NAMING) as batch:
        batch.drop_constraint(old, type_="unique")
        batch.create_unique_constraint("uq_model_versions_job_model", ["job_id", "model_id"])
        batch.create_index("ix_model_versions_job_id", ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("model_versions", naming_convention=NAMING) as batch:
        batch.drop_index("ix_model_versions_job_id")
        batch.drop_constraint("uq_model_versions_job_model", type_="unique")
        batch.create_unique_constraint("uq_model_versions_job_id", ["job_id"])
