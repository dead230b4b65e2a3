from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.core.pagination import Page
from app.pipelines.models import Pipeline, PipelineRun, RunStatus, TaskRun, TaskStatus
from app.pipelines.spec import PipelineSpec
from app.sources import gitops

NAME_PATTERN = r"^[a-z][a-z0-9_-]*$"


class PipelineCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=NAME_PATTERN, examples=["churn-ci"])
    description: str = Field(default="", max_length=10_000)
    spec: PipelineSpec
    schedule: str | None = Field(
        default=None, max_length=100, description="cron expression (UTC), e.g. `0 3 * * *`"
    )


class PipelineUpdate(BaseModel):
    description: str | None = Field(default=None, max_length=10_000)
    spec: PipelineSpec | None = None
    schedule: str | None = Field(default=None, max_length=100, description="empty string clears it")


class PipelineRead(BaseModel):
    id: int
    name: str
    description: str
    spec: dict[str, Any]
    schedule: str | None
    schedule_paused: bool
    next_run_at: datetime | None
    created_at: datetime
    updated_at: datetime


class PipelinePage(Page[PipelineRead]):
    pass


class RunRequest(BaseModel):
    params: dict[str, Any] = Field(
        default_factory=dict, description="Overrides merged into every task's params by key."
    )
    source: str | None = Field(default=None, description="Git source whose code to use.")
    commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{7,64}$")
    branch: str | None = Field(default=None, max_length=250)
    dataset_version_id: int | None = None


class TaskRunRead(BaseModel):
    name: str
    type: str
    status: TaskStatus
    attempts: int
    max_attempts: int
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    next_attempt_at: datetime | None
    inputs: dict[str, Any] = Field(
        description="Pinned when queued: dataset version, digest, commit."
    )
    outputs: dict[str, Any]
    error: str | None
    cached_from_task_run_id: int | None


class PipelineRunRead(BaseModel):
    id: int
    pipeline: str
    trigger: str
    status: RunStatus
    params: dict[str, Any]
    repo_url: str | None
    branch: str | None
    commit: str | None
    dataset_version_id: int | None
    created_by: str | None
    cancel_requested: bool
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    tasks: list[TaskRunRead]


class PipelineRunPage(Page[PipelineRunRead]):
    pass


class TaskLog(BaseModel):
    task: str
    offset: int = Field(description="Byte offset of `text` in the log.")
    next_offset: int = Field(description="Pass as `offset` to read what was written since.")
    complete: bool = Field(description="The task has ended: nothing more will be written.")
    text: str


def pipeline_read(pipeline: Pipeline) -> PipelineRead:
    return PipelineRead(
        id=pipeline.id,
        name=pipeline.name,
        description=pipeline.description,
        spec=pipeline.spec,
        schedule=pipeline.schedule,
        schedule_paused=pipeline.schedule_paused,
        next_run_at=pipeline.next_run_at,
        created_at=pipeline.created_at,
        updated_at=pipeline.updated_at,
    )


def task_read(task: TaskRun) -> TaskRunRead:
    duration = None
    if task.started_at and task.finished_at:
        duration = int((task.finished_at - task.started_at).total_seconds() * 1000)
    return TaskRunRead(
        name=task.name,
        type=task.type,
        status=task.status,
        attempts=task.attempts,
        max_attempts=task.max_attempts,
        queued_at=task.queued_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        duration_ms=duration,
        next_attempt_at=task.next_attempt_at,
        inputs=task.inputs,
        outputs=task.outputs,
        error=task.error,
        cached_from_task_run_id=task.cached_from_id,
    )


def run_read(run: PipelineRun, pipeline_name: str) -> PipelineRunRead:
    return PipelineRunRead(
        id=run.id,
        pipeline=pipeline_name,
        trigger=run.trigger,
        status=run.status,
        params=run.params,
        repo_url=gitops.redact(run.repo_url) if run.repo_url else None,
        branch=run.branch,
        commit=run.commit,
        dataset_version_id=run.dataset_version_id,
        created_by=run.created_by,
        cancel_requested=run.cancel_requested,
        error=run.error,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        tasks=[task_read(t) for t in run.tasks],
    )
