"""Retraining policies and the record of every time one was evaluated."""

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, BigId, JSONDocument, utcnow


class RetrainingPolicy(Base):
    """Which pipeline retrains which deployment's model, on what triggers, from which rows.

    The `last_*` columns are cursors: what the triggers have already seen (a drift report, a
    dataset version, labelled rows), so one piece of evidence fires at most once."""

    __tablename__ = "retraining_policy"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployment.id", ondelete="CASCADE"), index=True
    )
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipeline.id", ondelete="CASCADE"))
    triggers: Mapped[dict[str, Any]] = mapped_column()
    window: Mapped[dict[str, Any]] = mapped_column()
    data: Mapped[dict[str, Any]] = mapped_column()
    training: Mapped[dict[str, Any]] = mapped_column()
    cooldown_seconds: Mapped[int] = mapped_column()
    promote: Mapped[bool] = mapped_column(Boolean, default=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_schedule_at: Mapped[datetime | None] = mapped_column(default=None)
    next_online_at: Mapped[datetime | None] = mapped_column(default=None)
    last_drift_report_id: Mapped[int | None] = mapped_column(default=None)
    last_dataset_version_id: Mapped[int | None] = mapped_column(default=None)
    last_online_row_at: Mapped[datetime | None] = mapped_column(default=None)
    last_retrain_at: Mapped[datetime | None] = mapped_column(default=None)
    created_by: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PolicyEvaluation(Base):
    """One look at a policy's triggers: what each said and with which numbers, whether a
    retrain started (or was coalesced into an earlier one), and how that retrain ended."""

    __tablename__ = "policy_evaluation"
    __table_args__ = (
        Index("ix_policy_evaluation_policy_id_id", "policy_id", "id"),
        Index("ix_policy_evaluation_retrain_status", "retrain_status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("retraining_policy.id", ondelete="CASCADE"))
    evaluated_at: Mapped[datetime] = mapped_column(default=utcnow)
    outcome: Mapped[str] = mapped_column(String(20), doc="fired, coalesced or quiet")
    fired_by: Mapped[list[str]] = mapped_column(default=list)
    reason: Mapped[str] = mapped_column(Text)
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JSONDocument, default=list)
    overrides: Mapped[dict[str, Any]] = mapped_column(default=dict)
    window: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    dataset_version_id: Mapped[int | None] = mapped_column(default=None)
    pipeline_run_id: Mapped[int | None] = mapped_column(default=None)
    retrain_status: Mapped[str | None] = mapped_column(
        String(20),
        default=None,
        doc="running, rejected, failed, registered, rolling_out, promoted or rolled_back",
    )
    retrain_detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    model_version_id: Mapped[int | None] = mapped_column(default=None)
    rollout_id: Mapped[int | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    created_by: Mapped[str | None] = mapped_column(String(200), default=None)
