"""webhook deliveries keep their event, object, dataset version and when they settled

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-03 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.core.db

revision: str = "0012"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_delivery") as batch:
        batch.add_column(
            sa.Column("event", sa.String(length=200), server_default="", nullable=False)
        )
        batch.add_column(sa.Column("object_uri", sa.String(length=2000), nullable=True))
        batch.add_column(
            sa.Column(
                "dataset_version_id",
                sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"),
                nullable=True,
            )
        )
        batch.add_column(
            sa.Column("settled_at", app.core.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch.create_foreign_key(
            batch.f("fk_webhook_delivery_dataset_version_id_dataset_version"),
            "dataset_version",
            ["dataset_version_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index(
            "ix_webhook_delivery_source_kind_source_id_id",
            ["source_kind", "source_id", "id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_delivery") as batch:
        batch.drop_index("ix_webhook_delivery_source_kind_source_id_id")
        batch.drop_constraint(
            batch.f("fk_webhook_delivery_dataset_version_id_dataset_version"), type_="foreignkey"
        )
        batch.drop_column("settled_at")
        batch.drop_column("dataset_version_id")
        batch.drop_column("object_uri")
        batch.drop_column("event")
