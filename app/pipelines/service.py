"""Pipelines (DAG specs with an optional cron schedule) and their runs.

Creating a run writes the run, its task rows and an outbox job in one transaction; the
orchestrator (`app.pipelines.orchestrator`) takes it from there on the workers.
"""

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from croniter import croniter
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.core.artifacts import ArtifactStore
from app.core.db import utcnow
from app.core.errors import Conflict, NotFound, Unprocessable, invalid_fields
from app.core.outbox import enqueue
from app.core.pagination import PageParams, keyset_page
from app.datasets import service as datasets
from app.datasets.models import DatasetVersion
from app.events import service as events
from app.events.types import EventType
from app.ml.training import TrainingError, build_estimator
from app.pipelines.models import Pipeline, PipelineRun, RunStatus, TaskRun, TaskStatus
from app.pipelines.schemas import PipelineCreate, PipelineUpdate
from app.pipelines.spec import ALLOWED_ESTIMATORS, PipelineSpec, run_overrides

ADVANCE_JOB = "pipelines.advance"
EXECUTE_JOB = "pipelines.execute_task"


def validate_schedule(expression: str | None) -> str | None:
    if not expression:
        return None
    if not croniter.is_valid(expression):
        raise Unprocessable(
            f"schedule {expression!r} is not a cron expression; e.g. '0 3 * * *' (03:00 UTC daily)",
            details={"field": "schedule"},
        )
    return expression


def next_fire(expression: str | None, after: datetime) -> datetime | None:
    if not expression:
        return None
    fire: datetime = croniter(expression, after).get_next(datetime)
    return fire


def _located(field: str, task_index: int, run_level: dict[str, Any]) -> list[int | str]:
    """Where a train task's param came from: the run request's params, or the spec."""
    if field in run_level:
        return ["body", "params", field]
    return ["body", "spec", "tasks", task_index, "params", field]


def check_train_tasks(session: Session, spec: PipelineSpec) -> None:
    """What a run would find only when it trains, refused when the pipeline is written: a
    hyperparameter the estimator does not have (or a value it refuses), and a target column
    that the named dataset's latest version lacks (a dataset not uploaded yet is not judged)."""
    problems = _train_task_problems(session, spec, {})
    if problems:
        raise invalid_fields(problems)


def check_run_params(session: Session, pipeline: Pipeline, params: dict[str, Any]) -> None:
    """The same for what a run is asked for with (its own hyperparameters, say): refused
    before it starts. The stored spec was judged when it was written."""
    spec = PipelineSpec.model_validate(pipeline.spec)
    problems = [p for p in _train_task_problems(session, spec, params) if p[0][1] == "params"]
    if problems:
        raise invalid_fields(problems)


def _train_task_problems(
    session: Session, spec: PipelineSpec, overrides: dict[str, Any]
) -> list[tuple[list[int | str], str]]:
    problems: list[tuple[list[int | str], str]] = []
    for index, task in enumerate(spec.tasks):
        if task.type != "train":
            continue
        run_level = run_overrides("train", task.params, overrides)
        params = {**task.params, **run_level}

        if params.get("estimator"):
            try:
                build_estimator(
                    params["estimator"], params.get("hyperparameters") or {}, ALLOWED_ESTIMATORS
                )
            except TrainingError as exc:
                problems.append(
                    (_located("hyperparameters", index, run_level), f"task {task.name!r}: {exc}")
                )
        target, dataset = params.get("target"), params.get("dataset")
        version = datasets.latest_version(session, dataset) if target and dataset else None
        columns = [c["name"] for c in (version.schema.get("columns") or [])] if version else []
        if version is not None and target not in columns:
            problems.append(
                (
                    _located("target", index, run_level),
                    f"task {task.name!r}: target column {target!r} is not in dataset "
                    f"{dataset!r} (version {version.version}); columns: {', '.join(columns)}",
                )
            )
    return problems


def create_pipeline(session: Session, data: PipelineCreate) -> Pipeline:
    if session.scalar(select(Pipeline.id).where(Pipeline.name == data.name)):
        raise Conflict(f"a pipeline named {data.name!r} already exists")
    check_train_tasks(session, data.spec)
    schedule = validate_schedule(data.schedule)
    pipeline = Pipeline(
        name=data.name,
        description=data.description,
        spec=data.spec.model_dump(mode="json"),
        schedule=schedule,
        next_run_at=next_fire(schedule, utcnow()),
    )
    session.add(pipeline)
    session.flush()
    return pipeline


def get_or_raise(session: Session, name: str, *, for_update: bool = False) -> Pipeline:
    stmt = select(Pipeline).where(Pipeline.name == name)
    pipeline = session.scalar(stmt.with_for_update() if for_update else stmt)
    if pipeline is None:
        raise NotFound(f"pipeline {name!r} does not exist")
    return pipeline


def list_pipelines(session: Session, page: PageParams) -> tuple[Sequence[Pipeline], str | None]:
    return keyset_page(session, select(Pipeline), Pipeline.id, page)


def update_pipeline(session: Session, name: str, data: PipelineUpdate) -> Pipeline:
    pipeline = get_or_raise(session, name, for_update=True)
    if data.description is not None:
        pipeline.description = data.description
    if data.spec is not None:
        check_train_tasks(session, data.spec)
        pipeline.spec = data.spec.model_dump(mode="json")
    if data.schedule is not None:
        pipeline.schedule = validate_schedule(data.schedule)
        pipeline.next_run_at = next_fire(pipeline.schedule, utcnow())
    pipeline.updated_at = utcnow()
    session.flush()
    return pipeline


def set_paused(session: Session, name: str, paused: bool) -> Pipeline:
    pipeline = get_or_raise(session, name, for_update=True)
    if pipeline.schedule is None:
        raise Conflict(f"pipeline {name!r} has no schedule to pause or resume")
    pipeline.schedule_paused = paused
    pipeline.next_run_at = None if paused else next_fire(pipeline.schedule, utcnow())
    session.flush()
    return pipeline


def start_run(
    session: Session,
    pipeline: Pipeline,
    *,
    trigger: str,
    params: dict[str, Any] | None = None,
    repo_url: str | None = None,
    git_source_id: int | None = None,
    branch: str | None = None,
    commit: str | None = None,
    dataset_version_id: int | None = None,
    created_by: str | None = None,
) -> PipelineRun:
    if dataset_version_id is not None and session.get(DatasetVersion, dataset_version_id) is None:
        raise Unprocessable(f"dataset version {dataset_version_id} does not exist")
    spec = PipelineSpec.model_validate(pipeline.spec)
    run = PipelineRun(
        pipeline_id=pipeline.id,
        trigger=trigger,
        params=params or {},
        spec=pipeline.spec,
        repo_url=repo_url,
        git_source_id=git_source_id,
        branch=branch,
        commit=commit,
        dataset_version_id=dataset_version_id,
        created_by=created_by,
        tasks=[
            TaskRun(name=t.name, type=t.type, max_attempts=t.retries + 1, status=TaskStatus.pending)
            for t in spec.tasks
        ],
    )
    session.add(run)
    session.flush()
    enqueue(session, ADVANCE_JOB, {"run_id": run.id})
    events.record(
        session,
        EventType.pipeline_run_created,
        f"pipeline:{pipeline.name}",
        {"pipeline": pipeline.name, "run_id": run.id, "trigger": trigger, "commit": commit},
        created_by,
    )
    return run


def get_run_or_raise(session: Session, run_id: int) -> PipelineRun:
    run = session.scalar(
        select(PipelineRun)
        .where(PipelineRun.id == run_id)
        .options(selectinload(PipelineRun.tasks), selectinload(PipelineRun.pipeline))
    )
    if run is None:
        raise NotFound(f"pipeline run {run_id} does not exist")
    return run


def list_runs(
    session: Session, page: PageParams, *, pipeline: str | None = None
) -> tuple[Sequence[PipelineRun], str | None]:
    stmt = select(PipelineRun).options(
        selectinload(PipelineRun.tasks), selectinload(PipelineRun.pipeline)
    )
    if pipeline is not None:
        stmt = stmt.where(PipelineRun.pipeline_id == get_or_raise(session, pipeline).id)
    return keyset_page(session, stmt, PipelineRun.id, page)


def cancel_run(session: Session, run_id: int, *, by: str) -> PipelineRun:
    """Tasks not yet running are cancelled now; running ones are stopped by their worker,
    which polls for this flag, within a few seconds."""
    run = session.scalar(select(PipelineRun).where(PipelineRun.id == run_id).with_for_update())
    if run is None:
        raise NotFound(f"pipeline run {run_id} does not exist")
    if run.status.terminal:
        raise Conflict(f"pipeline run {run_id} already ended ({run.status.value})")
    run.cancel_requested = True
    now = utcnow()
    for task in session.scalars(select(TaskRun).where(TaskRun.pipeline_run_id == run.id)):
        if task.status in (TaskStatus.pending, TaskStatus.queued, TaskStatus.retrying):
            task.status = TaskStatus.cancelled
            task.finished_at = now
            task.error = f"cancelled by {by}"
    enqueue(session, ADVANCE_JOB, {"run_id": run.id})
    session.flush()
    return get_run_or_raise(session, run_id)


def log_path(store: ArtifactStore, run_id: int, task: str) -> Path:
    return store.root / "logs" / "pipeline-runs" / str(run_id) / f"{task}.log"


MAX_LOG_OFFSET = 2**63 - 1  # what a file offset (off_t) can hold


def read_log(
    session: Session, store: ArtifactStore, run_id: int, task: str, offset: int, limit: int
) -> tuple[str, int, bool]:
    run = get_run_or_raise(session, run_id)
    found = next((t for t in run.tasks if t.name == task), None)
    if found is None:
        raise NotFound(f"pipeline run {run_id} has no task {task!r}")
    path = log_path(store, run_id, task)
    if not path.exists() or offset >= path.stat().st_size:
        return "", offset, found.status.terminal  # seeking far past the end is an OSError
    with path.open("rb") as handle:
        handle.seek(offset)
        chunk = handle.read(limit)
    return chunk.decode("utf-8", errors="replace"), offset + len(chunk), found.status.terminal


def run_status_of(tasks: Sequence[TaskRun]) -> RunStatus | None:
    """The run's final status once every task has ended, else None."""
    if not all(t.status.terminal for t in tasks):
        return None
    statuses = {t.status for t in tasks}
    if statuses & {TaskStatus.failed, TaskStatus.upstream_failed}:
        return RunStatus.failed
    if TaskStatus.cancelled in statuses:
        return RunStatus.cancelled
    if TaskStatus.rejected in statuses:
        return RunStatus.rejected
    return RunStatus.succeeded
