"""Retention, run by beat: prediction logs, feedback and rollups older than their settings
go, in batches so a large backlog never holds one long transaction."""

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select

from app.core.db import utcnow
from app.core.jobs import JobContext, job
from app.deployments.models import Replica
from app.monitoring.models import Feedback, PredictionLog, ServingRollup

PRUNE_JOB = "monitoring.prune"
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
