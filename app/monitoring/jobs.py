"""Retention, run by beat: prediction logs, feedback and rollups older than their settings
go, in batches so a large backlog never holds one long transaction."""

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.core.db import utcnow
from app.core.jobs import JobContext, each_locked, job
from app.deployments.models import Replica
from app.monitoring import alerts, drift_reports
from app.monitoring.models import (
    AlertRule,
    DriftReport,
    Feedback,
    PredictionLog,
    ServingRollup,
)

PRUNE_JOB = "monitoring.prune"
ALERTS_JOB = "monitoring.evaluate_alerts"
DRIFT_TICK_JOB = "monitoring.tick_drift"
BATCH = 10_000
STALE_REPLICA_ROWS = timedelta(hours=1)


def _prune(ctx: JobContext, model: Any, column: str, older_than: timedelta) -> int:
    cutoff = utcnow() - older_than
    removed = 0
    while True:
        with ctx.transaction() as session:
            ids = session.scalars(
                select(model.id).where(getattr(model, column) < cutoff).limit(BATCH)
            ).all()
            if ids:
                session.execute(delete(model).where(model.id.in_(ids)))
        removed += len(ids)
        if len(ids) < BATCH:
            return removed


@job(PRUNE_JOB, max_retries=0, transactional=False)
def prune(ctx: JobContext) -> None:
    settings = ctx.settings
    _prune(ctx, PredictionLog, "created_at", timedelta(days=settings.prediction_log_days))
    _prune(ctx, Feedback, "created_at", timedelta(days=settings.prediction_log_days))
    _prune(ctx, ServingRollup, "minute", timedelta(days=settings.rollup_days))
    _prune(ctx, Replica, "reported_at", STALE_REPLICA_ROWS)  # rows of gateways that died


@job(ALERTS_JOB, max_retries=0, transactional=False)
def evaluate_alerts(ctx: JobContext) -> None:
    """Each rule in its own unit of work, so one failing query does not silence the others."""
    with ctx.session_factory() as session:
        ids = session.scalars(select(AlertRule.id).where(AlertRule.active.is_(True))).all()
    each_locked(ctx, AlertRule, ids, alerts.evaluate, "evaluating alert rule")


@job(drift_reports.DRIFT_JOB)
def drift_report(session: Session, ctx: JobContext, report_id: int) -> None:
    report = session.get(DriftReport, report_id, with_for_update=True)
    if report is not None and report.status == "pending":
        drift_reports.compute(
            session,
            report,
            max_rows=ctx.settings.drift_max_rows,
            min_rows=ctx.settings.drift_min_rows,
        )


@job(DRIFT_TICK_JOB, max_retries=0)
def tick_drift(session: Session, ctx: JobContext) -> None:
    drift_reports.due(session, utcnow())
