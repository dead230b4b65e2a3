"""Beat's side of continuous training: every policy evaluated in its own unit of work, and
old quiet evaluations pruned."""

from datetime import timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from app.core.db import utcnow
from app.core.jobs import JobContext, each_locked, job
from app.training import retrain, triggers
from app.training.models import PolicyEvaluation, RetrainingPolicy

TICK_JOB = "training.tick"
PRUNE_JOB = "training.prune"


@job(TICK_JOB, max_retries=0, transactional=False)
def tick(ctx: JobContext) -> None:
    """Enabled policies, and disabled ones whose last retrain is still in flight."""
    with ctx.session_factory() as session:
        busy = select(PolicyEvaluation.policy_id).where(
            PolicyEvaluation.retrain_status.in_(retrain.IN_FLIGHT)
        )
        ids = session.scalars(
            select(RetrainingPolicy.id)
            .where(or_(RetrainingPolicy.enabled.is_(True), RetrainingPolicy.id.in_(busy)))
            .order_by(RetrainingPolicy.id)
        ).all()
    each_locked(
        ctx,
        RetrainingPolicy,
        ids,
        lambda session, policy: triggers.tick(session, ctx.artifacts, policy),
        "evaluating retraining policy",
    )


@job(PRUNE_JOB, max_retries=0)
def prune(session: Session, ctx: JobContext) -> None:
    """Quiet evaluations (nothing fired) go after the prediction-log retention; the ones that
    fired or were coalesced stay: they are the history of why models changed."""
    cutoff = utcnow() - timedelta(days=ctx.settings.prediction_log_days)
    session.execute(
        delete(PolicyEvaluation).where(
            PolicyEvaluation.outcome == "quiet", PolicyEvaluation.evaluated_at < cutoff
        )
    )
