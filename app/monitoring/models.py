"""What the gateway saw: prediction logs, per-minute rollups, and feedback joined to them."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, BigId, utcnow


class PredictionLog(Base):
    """One request as one variant answered it (a shadow copy is its own row, same request id).

    No foreign key to the deployment: logs outlive a deleted deployment until retention
    removes them, and the gateway writes them in batches without a lookup per row."""

    __tablename__ = "prediction_log"
    __table_args__ = (
        Index("ix_prediction_log_deployment_created_at", "deployment", "created_at"),
        Index("ix_prediction_log_request_id", "request_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(100))
    deployment: Mapped[str] = mapped_column(String(63))
    variant: Mapped[str] = mapped_column(String(63))
    model_version_id: Mapped[int] = mapped_column()
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[int] = mapped_column()
    total_ms: Mapped[float] = mapped_column(Float)
    model_ms: Mapped[float | None] = mapped_column(Float, default=None)
    inputs: Mapped[Any | None] = mapped_column(JSON, default=None)
    outputs: Mapped[Any | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Feedback(Base):
    """Ground truth for a request, arriving later: a label (per row) or a reward."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("deployment", "request_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    deployment: Mapped[str] = mapped_column(String(63))
    request_id: Mapped[str] = mapped_column(String(100))
    labels: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    reward: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ServingRollup(Base):
    """One gateway's counts for one variant in one minute. The gateway rewrites the row of
    the current minute as it goes; readers sum over gateways and merge the histograms."""

    __tablename__ = "serving_rollup"
    __table_args__ = (UniqueConstraint("deployment", "variant", "minute", "gateway"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    deployment: Mapped[str] = mapped_column(String(63))
    variant: Mapped[str] = mapped_column(String(63))
    minute: Mapped[datetime] = mapped_column()
    gateway: Mapped[str] = mapped_column(String(100))
    invocations: Mapped[int] = mapped_column(default=0)
    shadow_invocations: Mapped[int] = mapped_column(default=0)
    errors_4xx: Mapped[int] = mapped_column(default=0)
    errors_5xx: Mapped[int] = mapped_column(default=0)
    total_ms_sum: Mapped[float] = mapped_column(Float, default=0.0)
    model_ms_sum: Mapped[float] = mapped_column(Float, default=0.0)
    overhead_ms_sum: Mapped[float] = mapped_column(Float, default=0.0)
    total_ms_hist: Mapped[list[int]] = mapped_column()
    model_ms_hist: Mapped[list[int]] = mapped_column()
    overhead_ms_hist: Mapped[list[int]] = mapped_column()
    cold_starts: Mapped[int] = mapped_column(default=0)
    cold_start_ms_sum: Mapped[float] = mapped_column(Float, default=0.0)
    cold_start_ms_max: Mapped[float] = mapped_column(Float, default=0.0)
    replicas_max: Mapped[int] = mapped_column(default=0)
    in_flight_max: Mapped[int] = mapped_column(default=0)
    per_replica: Mapped[dict[str, Any]] = mapped_column(default=dict)
