import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Enum, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.core.db import Base, BigId, utcnow


class Environment(enum.StrEnum):
    staging = "staging"
    production = "production"


class VariantMode(enum.StrEnum):
    live = "live"
    shadow = "shadow"


class Deployment(Base):
    """Desired state: what should serve, how it scales and how changes roll out. The gateway
    reconciles towards it; `generation` moves on every change so it knows what it has seen."""

    __tablename__ = "deployment"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    environment: Mapped[Environment] = mapped_column(
        Enum(Environment, name="environment", native_enum=False, length=20)
    )
    autoscaling: Mapped[dict[str, Any]] = mapped_column()
    rollout: Mapped[dict[str, Any]] = mapped_column()
    unit_key: Mapped[str | None] = mapped_column(String(100), default=None)
    generation: Mapped[int] = mapped_column(default=1)
    created_by: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    variants: Mapped[list["Variant"]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="Variant.id"
    )


class Variant(Base):
    __tablename__ = "deployment_variant"
    __table_args__ = (UniqueConstraint("deployment_id", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployment.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    model_ref: Mapped[str] = mapped_column(String(300), doc="as asked: churn@champion or churn/3")
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_version.id", ondelete="RESTRICT"), index=True
    )
    weight: Mapped[int] = mapped_column()
    mode: Mapped[VariantMode] = mapped_column(
        Enum(VariantMode, name="variant_mode", native_enum=False, length=20)
    )
