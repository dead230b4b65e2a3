import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Enum, ForeignKey, Index, String, Text, UniqueConstraint, false
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
    log_sample_rate: Mapped[float] = mapped_column(default=1.0)
    public: Mapped[bool] = mapped_column(
        default=False, server_default=false(), doc="predictions answered without a token"
    )
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
    mirror: Mapped[bool] = mapped_column(
        Boolean, default=False, doc="also gets a copy of the other live variants' requests"
    )


class RolloutState(enum.StrEnum):
    running = "running"
    completed = "completed"
    rolled_back = "rolled_back"


class Rollout(Base):
    """One promotion walking its traffic steps. The baseline keeps the rest of the traffic
    until the candidate reaches 100%; `decisions` say what happened at every check."""

    __tablename__ = "rollout"
    __table_args__ = (Index("ix_rollout_state", "state"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployment.id", ondelete="CASCADE"), index=True
    )
    strategy: Mapped[str] = mapped_column(String(20))
    baseline_variant: Mapped[str] = mapped_column(String(63))
    baseline_ref: Mapped[str] = mapped_column(String(300))
    baseline_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_version.id", ondelete="RESTRICT"), index=True
    )
    candidate_variant: Mapped[str] = mapped_column(String(63))
    candidate_ref: Mapped[str] = mapped_column(String(300))
    candidate_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_version.id", ondelete="RESTRICT"), index=True
    )
    steps: Mapped[list[int]] = mapped_column()
    step_index: Mapped[int] = mapped_column(default=0)
    step_started_at: Mapped[datetime] = mapped_column(default=utcnow)
    bake_seconds: Mapped[float] = mapped_column()
    guardrails: Mapped[dict[str, Any]] = mapped_column()
    set_alias: Mapped[str | None] = mapped_column(String(63), default=None)
    state: Mapped[RolloutState] = mapped_column(
        Enum(RolloutState, name="rollout_state", native_enum=False, length=20),
        default=RolloutState.running,
    )
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_by: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    decisions: Mapped[list["RolloutDecision"]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="RolloutDecision.id"
    )


class RolloutDecision(Base):
    __tablename__ = "rollout_decision"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(
        ForeignKey("rollout.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(default=utcnow)
    step_index: Mapped[int] = mapped_column()
    percent: Mapped[int] = mapped_column()
    action: Mapped[str] = mapped_column(String(20), doc="start, hold, advance, complete, rollback")
    reason: Mapped[str] = mapped_column(Text)
    numbers: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ABTest(Base):
    """An A/B test between live variants, judged on feedback by a sequential test."""

    __tablename__ = "ab_test"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployment.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    control: Mapped[str] = mapped_column(String(63))
    treatment: Mapped[str] = mapped_column(String(63))
    metric: Mapped[str] = mapped_column(String(20), doc="accuracy (label = prediction) or reward")
    higher_is_better: Mapped[bool] = mapped_column(Boolean, default=True)
    min_samples: Mapped[int] = mapped_column()
    alpha: Mapped[float] = mapped_column()
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)
    created_by: Mapped[str | None] = mapped_column(String(200), default=None)


class Replica(Base):
    """Actual state as a gateway reports it: it rewrites its own rows on every reconcile."""

    __tablename__ = "serving_replica"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployment.id", ondelete="CASCADE"), index=True
    )
    variant: Mapped[str] = mapped_column(String(63))
    model_version_id: Mapped[int] = mapped_column()
    gateway: Mapped[str] = mapped_column(String(100), index=True)
    port: Mapped[int] = mapped_column()
    pid: Mapped[int | None] = mapped_column(default=None)
    state: Mapped[str] = mapped_column(String(20), doc="starting or ready")
    started_at: Mapped[datetime] = mapped_column()
    ready_at: Mapped[datetime | None] = mapped_column(default=None)
    in_flight: Mapped[int] = mapped_column(default=0)
    served: Mapped[int] = mapped_column(default=0)
    reported_at: Mapped[datetime] = mapped_column(default=utcnow)
