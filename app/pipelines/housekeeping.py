"""Periodic jobs (beat): cron-scheduled runs, and nothing left running forever."""

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db import utcnow
from app.core.jobs import JobContext, job
from app.core.outbox import enqueue
from app.pipelines import service
from app.pipelines.models import Pipeline, PipelineRun, RunStatus, TaskRun, TaskStatus
from app.pipelines.spec import PipelineSpec

SWEEP_JOB = "pipelines.sweep"
SCHEDULE_JOB = "pipelines.tick_schedules"
TIMEOUT_GRACE = timedelta(seconds=60)


@job(SCHEDULE_JOB)
def tick_schedules(session: Session, ctx: JobContext) -> None:
    now = utcnow()
    stmt = (
        select(Pipeline)
        .where(
            Pipeline.schedule.is_not(None),
            Pipeline.schedule_paused.is_(False),
            Pipeline.next_run_at <= now,
        )
        .with_for_update(skip_locked=True)
    )
    for pipeline in session.scalars(stmt):
        service.start_run(session, pipeline, trigger="schedule", created_by="schedule")
        pipeline.next_run_at = service.next_fire(pipeline.schedule, now)


@job(SWEEP_JOB)
def sweep(session: Session, ctx: JobContext) -> None:
    """Tasks whose worker stopped heartbeating go back to the queue (or fail once past their
    timeout); runs whose tasks have all ended are settled."""
    now = utcnow()
    stale_after = timedelta(seconds=max(10 * ctx.settings.task_heartbeat_seconds, 10))
    running = session.scalars(
        select(TaskRun)
        .where(TaskRun.status == TaskStatus.running, TaskRun.heartbeat_at < now - stale_after)
        .with_for_update(skip_locked=True)
    ).all()
    for task in running:
        run = session.get(PipelineRun, task.pipeline_run_id)
        assert run is not None
        spec = next(t for t in PipelineSpec.model_validate(run.spec).tasks if t.name == task.name)
        started = task.started_at or now
        if now - started > timedelta(seconds=spec.timeout) + TIMEOUT_GRACE:
            task.status = TaskStatus.failed
            task.finished_at = now
            task.error = f"timed out after {spec.timeout} s and its worker stopped reporting"
            enqueue(session, service.ADVANCE_JOB, {"run_id": run.id})
        else:
            task.status = TaskStatus.queued
            task.error = f"worker {task.worker} stopped heartbeating; re-queued"
            enqueue(session, service.EXECUTE_JOB, {"task_run_id": task.id})
    unsettled = session.scalars(
        select(PipelineRun.id).where(PipelineRun.status.in_([RunStatus.queued, RunStatus.running]))
    ).all()
    for run_id in unsettled:
        statuses = session.scalars(
            select(TaskRun.status).where(TaskRun.pipeline_run_id == run_id)
        ).all()
        if all(TaskStatus(s).terminal for s in statuses):
            enqueue(session, service.ADVANCE_JOB, {"run_id": run_id})
