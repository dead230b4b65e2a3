"""Moving pipeline runs forward: schedule ready tasks, run them, record what happened.

`advance` is the only place that decides which task runs next; it holds the run's row lock,
so concurrent task completions never schedule a task twice. `execute_task` runs one task
outside any long transaction: it marks the task running (visible at once), heartbeats while
the stage runs, then records the outcome and asks for another `advance`.
"""

import logging
import os
import socket
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.core.db import utcnow
from app.core.jobs import JobContext, job
from app.core.outbox import enqueue
from app.datasets import service as datasets
from app.datasets.models import DatasetVersion
from app.events import service as events
from app.events.types import EventType
from app.pipelines import stages
from app.pipelines.models import PipelineRun, RunStatus, TaskRun, TaskStatus
from app.pipelines.service import ADVANCE_JOB, EXECUTE_JOB, run_status_of
from app.pipelines.spec import PipelineSpec, TaskSpec, cache_key, topological_order

logger = logging.getLogger(__name__)
FAILED_UPSTREAM = {TaskStatus.failed, TaskStatus.upstream_failed}
NOT_BLESSED_UPSTREAM = {TaskStatus.rejected, TaskStatus.skipped}


def _lock_run(session: Session, run_id: int) -> PipelineRun | None:
    return session.scalar(
        select(PipelineRun)
        .where(PipelineRun.id == run_id)
        .options(selectinload(PipelineRun.tasks), selectinload(PipelineRun.pipeline))
        .with_for_update()
    )


@job(ADVANCE_JOB)
def advance(session: Session, ctx: JobContext, run_id: int) -> None:
    run = _lock_run(session, run_id)
    if run is None or run.status.terminal:
        return
    now = utcnow()
    if run.started_at is None:
        run.started_at = now
        run.status = RunStatus.running
    spec = PipelineSpec.model_validate(run.spec)
    by_name = {t.name: t for t in spec.tasks}
    tasks = {t.name: t for t in run.tasks}
    changed = True
    while changed:  # a skip or a cache hit can make further tasks ready in the same pass
        changed = False
        for name in topological_order(spec):
            task = tasks[name]
            if task.status == TaskStatus.pending:
                changed |= _decide(session, run, by_name[name], task, tasks)
    final = run_status_of(list(tasks.values()))
    if final is not None:
        _finish(session, run, final)


def _end(task: TaskRun, status: TaskStatus, reason: str | None) -> bool:
    task.status = status
    task.error = reason
    task.finished_at = utcnow()
    return True


def _decide(
    session: Session, run: PipelineRun, spec: TaskSpec, task: TaskRun, tasks: dict[str, TaskRun]
) -> bool:
    """Settle one pending task if its upstream allows; True when its state changed."""
    if run.cancel_requested:
        return _end(task, TaskStatus.cancelled, "the run was cancelled")
    deps = [tasks[d] for d in spec.depends_on]
    for dep in deps:
        if dep.status in FAILED_UPSTREAM:
            return _end(task, TaskStatus.upstream_failed, f"upstream task {dep.name} failed")
        if dep.status == TaskStatus.cancelled:
            return _end(task, TaskStatus.cancelled, f"upstream task {dep.name} was cancelled")
        if dep.status in NOT_BLESSED_UPSTREAM:
            return _end(
                task, TaskStatus.skipped, f"upstream task {dep.name} was {dep.status.value}"
            )
    if not all(dep.status == TaskStatus.succeeded for dep in deps):
        return False
    if spec.when is not None:
        gate = tasks[spec.when.split(":", 1)[1]]
        if gate.outputs.get("verdict") != "blessed":
            return _end(task, TaskStatus.skipped, f"{spec.when}: the model was not blessed")
    task.inputs = _pin_inputs(session, run, spec)
    if spec.cache:
        digests = [task.inputs["dataset_digest"]] if task.inputs.get("dataset_digest") else []
        task.cache_key = cache_key(
            spec,
            commit=run.commit,
            dataset_digests=digests,
            upstream_outputs={dep.name: dep.outputs for dep in deps},
        )
        hit = session.scalar(
            select(TaskRun)
            .where(
                TaskRun.cache_key == task.cache_key,
                TaskRun.status == TaskStatus.succeeded,
                TaskRun.id != task.id,
            )
            .order_by(TaskRun.id.desc())
            .limit(1)
        )
        if hit is not None:
            task.outputs = {**hit.outputs, "cached": True}
            task.cached_from_id = hit.id
            task.started_at = utcnow()
            return _end(task, TaskStatus.succeeded, None)
    task.status = TaskStatus.queued
    task.queued_at = utcnow()
    enqueue(session, EXECUTE_JOB, {"task_run_id": task.id})
    return True


def _pin_inputs(session: Session, run: PipelineRun, spec: TaskSpec) -> dict[str, Any]:
    """The dataset version a task reads is fixed when it is queued, so its lineage and cache
    key name exactly the rows it used."""
    version: DatasetVersion | None = None
    if run.dataset_version_id is not None:
        version = session.get(DatasetVersion, run.dataset_version_id)
    elif isinstance(spec.params.get("dataset"), str):
        version = datasets.latest_version(session, spec.params["dataset"])
    if version is None:
        return {"commit": run.commit}
    return {
        "commit": run.commit,
        "dataset_version_id": version.id,
        "dataset_digest": version.digest,
    }


def _finish(session: Session, run: PipelineRun, status: RunStatus) -> None:
    run.status = status
    run.finished_at = utcnow()
    failed = [t for t in run.tasks if t.status in (TaskStatus.failed, TaskStatus.rejected)]
    if failed:
        run.error = "; ".join(f"{t.name}: {t.error}" for t in failed if t.error) or None
    events.record(
        session,
        EventType.pipeline_run_finished,
        f"pipeline:{run.pipeline.name}",
        {"pipeline": run.pipeline.name, "run_id": run.id, "status": status.value},
    )


# -- executing one task ------------------------------------------------------------------------


def _stale(task: TaskRun, ctx: JobContext) -> bool:
    limit = timedelta(seconds=3 * ctx.settings.task_heartbeat_seconds)
    return task.heartbeat_at is None or utcnow() - task.heartbeat_at > limit


@job(EXECUTE_JOB, transactional=False)
def execute_task(ctx: JobContext, task_run_id: int) -> None:
    with ctx.transaction() as session:
        claimed = _claim(session, ctx, task_run_id)
    if claimed is None:
        return
    attempt, stage_input = claimed
    control = stages.Control(ctx, task_run_id, attempt)
    try:
        result = stages.execute(ctx, stage_input, control)
    except Exception as exc:  # a bug in a stage must not leave the task running forever
        logger.exception("stage %s crashed", stage_input.task_type)
        result = stages.StageResult("failed", {}, f"internal error: {type(exc).__name__}: {exc}")
    with ctx.transaction() as session:
        _record(session, ctx, task_run_id, attempt, result)


def _claim(
    session: Session, ctx: JobContext, task_run_id: int
) -> tuple[int, stages.StageInput] | None:
    task = session.scalar(select(TaskRun).where(TaskRun.id == task_run_id).with_for_update())
    if task is None:
        return None
    runnable = task.status in (TaskStatus.queued, TaskStatus.retrying)
    lost = task.status == TaskStatus.running and _stale(task, ctx)  # its worker died
    if not (runnable or lost):
        return None  # done already, or alive elsewhere: deliveries are at least once
    run = session.get(PipelineRun, task.pipeline_run_id)
    assert run is not None
    if run.cancel_requested:
        _end(task, TaskStatus.cancelled, "the run was cancelled")
        enqueue(session, ADVANCE_JOB, {"run_id": run.id})
        return None
    now = utcnow()
    task.status = TaskStatus.running
    task.attempts += 1
    task.started_at = now
    task.heartbeat_at = now
    task.next_attempt_at = None
    task.worker = f"{socket.gethostname()}:{os.getpid()}"
    if run.status == RunStatus.queued:
        run.status = RunStatus.running
        run.started_at = run.started_at or now
    return task.attempts, stages.stage_input(session, run, task)


def _record(
    session: Session, ctx: JobContext, task_run_id: int, attempt: int, result: stages.StageResult
) -> None:
    task = session.scalar(select(TaskRun).where(TaskRun.id == task_run_id).with_for_update())
    if task is None or task.status != TaskStatus.running or task.attempts != attempt:
        return  # another worker took over this task meanwhile; its outcome counts
    run = session.get(PipelineRun, task.pipeline_run_id)
    assert run is not None
    task.heartbeat_at = None
    task.outputs = result.outputs
    if result.status == "failed" and task.attempts < task.max_attempts and not run.cancel_requested:
        spec = next(t for t in PipelineSpec.model_validate(run.spec).tasks if t.name == task.name)
        delay = timedelta(seconds=spec.retry_backoff_seconds * 2 ** (task.attempts - 1))
        task.status = TaskStatus.retrying
        task.error = result.error
        task.next_attempt_at = utcnow() + delay
        enqueue(session, EXECUTE_JOB, {"task_run_id": task.id}, delay=delay)
        return
    _end(task, TaskStatus(result.status), result.error)
    enqueue(session, ADVANCE_JOB, {"run_id": task.pipeline_run_id})
