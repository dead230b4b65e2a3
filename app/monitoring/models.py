"""What the gateway saw: prediction logs, per-minute rollups, and feedback joined to them."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, String, Text, UniqueConstraint
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


class DriftReport(Base):
    """Production inputs of a window against the served version's reference profile, computed
    by a worker; `result` holds per-feature method, statistic, threshold, verdict, histograms."""

    __tablename__ = "drift_report"
    __table_args__ = (Index("ix_drift_report_deployment_id_id", "deployment_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployment.id", ondelete="CASCADE"))
    variant: Mapped[str | None] = mapped_column(String(63), default=None)
    model_version_id: Mapped[int] = mapped_column()
    window_start: Mapped[datetime] = mapped_column()
    window_end: Mapped[datetime] = mapped_column()
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    dataset_drifted: Mapped[bool | None] = mapped_column(Boolean, default=None)
    drifted_share: Mapped[float | None] = mapped_column(Float, default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    trigger: Mapped[str] = mapped_column(String(20), default="manual")
    created_by: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class DriftSchedule(Base):
    __tablename__ = "drift_schedule"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployment.id", ondelete="CASCADE"), unique=True
    )
    cron: Mapped[str] = mapped_column(String(100))
    window: Mapped[str] = mapped_column(String(20))
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    next_run_at: Mapped[datetime] = mapped_column()


class AlertRule(Base):
    """A condition on a deployment's metrics, evaluated by beat. It fires once when the
    condition has held for `for_seconds`, and resolves once when it stops holding."""

    __tablename__ = "alert_rule"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployment.id", ondelete="CASCADE"), index=True
    )
    metric: Mapped[str] = mapped_column(String(40))
    operator: Mapped[str] = mapped_column(String(2))
    threshold: Mapped[float] = mapped_column(Float)
    window: Mapped[str] = mapped_column(String(20))
    for_seconds: Mapped[int] = mapped_column(default=0)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[str] = mapped_column(String(20), default="ok", doc="ok, pending, firing or error")
    error: Mapped[str | None] = mapped_column(
        Text, default=None, doc="why the last evaluation failed (state error)"
    )
    pending_since: Mapped[datetime | None] = mapped_column(default=None)
    last_value: Mapped[float | None] = mapped_column(Float, default=None)
    last_evaluated_at: Mapped[datetime | None] = mapped_column(default=None)
    created_by: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Alert(Base):
    __tablename__ = "alert"
    __table_args__ = (Index("ix_alert_state_id", "state", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    rule_id: Mapped[int] = mapped_column(
        ForeignKey("alert_rule.id", ondelete="CASCADE"), index=True
    )
    deployment: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(20), doc="firing, error or resolved")
    value: Mapped[float | None] = mapped_column(Float, default=None)
    threshold: Mapped[float] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(default=None)
