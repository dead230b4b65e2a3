from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import unit_of_work, utcnow
from app.core.jobs import run_job
from app.monitoring.jobs import PRUNE_JOB
from app.monitoring.models import Feedback, PredictionLog
from tests.conftest import InlineJobs


def test_prune_removes_only_what_is_older_than_the_retention(
    jobs: InlineJobs, session_factory: sessionmaker[Session]
) -> None:
    now = utcnow()
    ages = [timedelta(days=40), timedelta(days=31), timedelta(days=29), timedelta(0)]
    with unit_of_work(session_factory) as session:
        for index, age in enumerate(ages):
            session.add(
                PredictionLog(
                    request_id=f"r{index}",
                    deployment="d",
                    variant="v",
                    model_version_id=1,
                    status=200,
                    total_ms=1.0,
                    created_at=now - age,
                )
            )
            session.add(Feedback(deployment="d", request_id=f"r{index}", created_at=now - age))
    run_job(jobs.ctx, PRUNE_JOB, {})  # default retention: 30 days
    with session_factory() as session:
        kept = session.scalars(select(PredictionLog.request_id).order_by(PredictionLog.id)).all()
        assert kept == ["r2", "r3"]
        assert session.scalar(select(func.count()).select_from(Feedback)) == 2
