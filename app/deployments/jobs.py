"""The rollout controller, run by beat: each running rollout is checked in its own unit of
work, so one that fails to advance does not hold the others back."""

from app.core.jobs import JobContext, each_locked, job
from app.deployments import rollouts
from app.deployments.models import Rollout

ADVANCE_JOB = "deployments.advance_rollouts"


@job(ADVANCE_JOB, max_retries=0, transactional=False)
def advance_rollouts(ctx: JobContext) -> None:
    with ctx.session_factory() as session:
        ids = rollouts.running_ids(session)
    each_locked(ctx, Rollout, ids, rollouts.advance, "advancing rollout")
