import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Enum, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.core.db import Base, BigId, utcnow


class VersionStatus(enum.StrEnum):
    pending = "pending"
    ready = "ready"
    failed = "failed"


class PackageStatus(enum.StrEnum):
    pending = "pending"
    ready = "ready"
    failed = "failed"


class RegisteredModel(Base):
    __tablename__ = "registered_model"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(250), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_version: Mapped[int] = mapped_column(default=0, doc="numbering counter, bumped under lock")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    aliases: Mapped[list["ModelAlias"]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="ModelAlias.alias"
    )


class ModelVersion(Base):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registered_model.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column()
    status: Mapped[VersionStatus] = mapped_column(
        Enum(VersionStatus, name="version_status", native_enum=False, length=20),
        default=VersionStatus.pending,
    )
    status_message: Mapped[str | None] = mapped_column(Text, default=None)
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source: Mapped[str] = mapped_column(String(20), doc="run or upload")
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("run.id", ondelete="SET NULL"), default=None, index=True
    )
    run_artifact_path: Mapped[str | None] = mapped_column(String(1000), default=None)
    dataset_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("dataset_version.id", ondelete="SET NULL"), default=None, index=True
    )
    target: Mapped[str | None] = mapped_column(String(250), default=None)
    parent_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_version.id", ondelete="SET NULL"), default=None
    )
    flavor: Mapped[str] = mapped_column(String(50), default="sklearn")
    artifact_digest: Mapped[str] = mapped_column(String(64), index=True)
    artifact_uri: Mapped[str] = mapped_column(String(2000))
    artifact_size_bytes: Mapped[int] = mapped_column(BigInteger)
    artifact_types: Mapped[list[str] | None] = mapped_column(default=None)
    model_class: Mapped[str | None] = mapped_column(String(250), default=None)
    signature: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    background_sample: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    compatibility: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    package_status: Mapped[PackageStatus | None] = mapped_column(
        Enum(PackageStatus, name="package_status", native_enum=False, length=20), default=None
    )
    package: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_by: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    model: Mapped[RegisteredModel] = relationship()


class ModelAlias(Base):
    __tablename__ = "model_alias"

    model_id: Mapped[int] = mapped_column(
        ForeignKey("registered_model.id", ondelete="CASCADE"), primary_key=True
    )
    alias: Mapped[str] = mapped_column(String(100), primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_version.id", ondelete="CASCADE"), index=True
    )
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    version: Mapped[ModelVersion] = relationship()


class AliasMove(Base):
    """Who moved an alias, when, from which version to which (null: created / removed)."""

    __tablename__ = "model_alias_move"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_id: Mapped[int] = mapped_column(
        ForeignKey("registered_model.id", ondelete="CASCADE"), index=True
    )
    alias: Mapped[str] = mapped_column(String(100))
    from_version: Mapped[int | None] = mapped_column(default=None)
    to_version: Mapped[int | None] = mapped_column(default=None)
    actor: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
