from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, BigId, utcnow


class GitSource(Base):
    """A repository whose pushes trigger a pipeline; its webhook secret is stored encrypted."""

    __tablename__ = "git_source"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    repo_url: Mapped[str] = mapped_column(String(2000))
    branch_pattern: Mapped[str] = mapped_column(String(250), default="main")
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipeline.id", ondelete="CASCADE"))
    secret_encrypted: Mapped[str] = mapped_column(Text)
    credentials_encrypted: Mapped[str | None] = mapped_column(
        Text, default=None, doc="the repository URL's user info, encrypted; never shown back"
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DataSource(Base):
    """An object-store prefix (or a signed generic JSON sender) whose new files become dataset
    versions and trigger a pipeline."""

    __tablename__ = "data_source"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset.id", ondelete="CASCADE"))
    pipeline_id: Mapped[int | None] = mapped_column(
        ForeignKey("pipeline.id", ondelete="SET NULL"), default=None
    )
    git_source_id: Mapped[int | None] = mapped_column(
        ForeignKey("git_source.id", ondelete="SET NULL"),
        default=None,
        doc="whose code a data-triggered run trains with (its branch head)",
    )
    secret_encrypted: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """Every accepted delivery id, so a retried or replayed delivery creates nothing twice,
    and its outcome, listed per source so a failure after the 202 is never silent."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        UniqueConstraint("source_kind", "source_id", "delivery_id"),
        Index("ix_webhook_delivery_source_kind_source_id_id", "source_kind", "source_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source_kind: Mapped[str] = mapped_column(String(10))
    source_id: Mapped[int] = mapped_column()
    delivery_id: Mapped[str] = mapped_column(String(1500), doc="S3 keys alone reach 1024 bytes")
    event: Mapped[str] = mapped_column(
        String(200), default="", server_default="", doc="push, pull_request, s3:ObjectCreated:Put"
    )
    outcome: Mapped[str] = mapped_column(
        String(20), doc="accepted (ingest queued), ignored, ingested or failed"
    )
    reason: Mapped[str] = mapped_column(Text, default="")
    object_uri: Mapped[str | None] = mapped_column(String(2000), default=None)
    pipeline_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("pipeline_run.id", ondelete="SET NULL"), default=None
    )
    dataset_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("dataset_version.id", ondelete="SET NULL"), default=None
    )
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    settled_at: Mapped[datetime | None] = mapped_column(
        default=None, doc="when the outcome was final: at once, or when the ingest job ended"
    )
