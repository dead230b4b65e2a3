"""git credentials stored apart from the repository URL

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 20:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("git_source") as batch:
        batch.add_column(sa.Column("credentials_encrypted", sa.Text(), nullable=True))
    with op.batch_alter_table("pipeline_run") as batch:
        batch.add_column(
            sa.Column(
                "git_source_id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=True
            )
        )
        batch.create_foreign_key(
            batch.f("fk_pipeline_run_git_source_id_git_source"),
            "git_source",
            ["git_source_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("pipeline_run") as batch:
        batch.drop_constraint(
            batch.f("fk_pipeline_run_git_source_id_git_source"), type_="foreignkey"
        )
        batch.drop_column("git_source_id")
    with op.batch_alter_table("git_source") as batch:
        batch.drop_column("credentials_encrypted")
