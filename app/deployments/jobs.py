"""The rollout controller, run by beat: each running rollout is checked in its own unit of
work, so one that fails to advance does not hold the others back."""

import logging

from app.core.jobs import JobContext, job
from app.deployments import rollouts
from app.deployments.models import Rollout

ADVANCE_JOB = "deployments.advance_rollouts"
logger = logging.getLogger(__name__)


@job(ADVANCE_JOB, max_retries=0, transactional=False)
def advance_rollouts(ctx: JobContext) -> None:
    with ctx.session_factory() as session:
        ids = rollouts.running_ids(session)
    for rollout_id in ids:
        try:
            with ctx.transaction() as session:
                rollout = session.get(Rollout, rollout_id, with_for_update={"skip_locked": True})
                if rollout is not None:
                    rollouts.advance(session, rollout)
        except Exception:
            logger.exception("rollout %s could not advance", rollout_id)
