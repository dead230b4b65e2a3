import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Enum, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.core.db import Base, BigId, utcnow


class RunStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    rejected = "rejected"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self not in (RunStatus.queued, RunStatus.running)


class TaskStatus(enum.StrEnum):
    pending = "pending"
    queued = "queued"
    running = "running"
    retrying = "retrying"
    succeeded = "succeeded"
    failed = "failed"
    rejected = "rejected"
    skipped = "skipped"
    upstream_failed = "upstream_failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_TASK


TERMINAL_TASK = frozenset(
    {
        TaskStatus.succeeded,
        TaskStatus.failed,
        TaskStatus.rejected,
        TaskStatus.skipped,
        TaskStatus.upstream_failed,
        TaskStatus.cancelled,
    }
)


class Pipeline(Base):
    __tablename__ = "pipeline"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict[str, Any]] = mapped_column()
    schedule: Mapped[str | None] = mapped_column(String(100), default=None, doc="cron, UTC")
    schedule_paused: Mapped[bool] = mapped_column(default=False)
    next_run_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PipelineRun(Base):
    __tablename__ = "pipeline_run"
    __table_args__ = (Index("ix_pipeline_run_status_created_at", "status", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(
        ForeignKey("pipeline.id", ondelete="CASCADE"), index=True
    )
    trigger: Mapped[str] = mapped_column(String(20), doc="manual, git, data or schedule")
    status: Mapped[RunStatus] = mapped_column(
        Enum(RunStatus, name="pipeline_run_status", native_enum=False, length=20),
        default=RunStatus.queued,
    )
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    spec: Mapped[dict[str, Any]] = mapped_column(
        doc="the pipeline spec as it was when the run began"
    )
    repo_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    git_source_id: Mapped[int | None] = mapped_column(
        ForeignKey("git_source.id", ondelete="SET NULL"),
        default=None,
        doc="whose stored credentials the checkout uses",
    )
    branch: Mapped[str | None] = mapped_column(String(250), default=None)
    commit: Mapped[str | None] = mapped_column(String(64), default=None)
    dataset_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("dataset_version.id", ondelete="SET NULL"), default=None
    )
    created_by: Mapped[str | None] = mapped_column(String(200), default=None)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    pipeline: Mapped[Pipeline] = relationship()
    tasks: Mapped[list["TaskRun"]] = relationship(
        back_populates="run",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="TaskRun.id",
    )


class TaskRun(Base):
    __tablename__ = "task_run"
    __table_args__ = (
        UniqueConstraint("pipeline_run_id", "name"),
        Index("ix_task_run_cache_key", "cache_key", "status"),
        Index("ix_task_run_status_heartbeat_at", "status", "heartbeat_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    pipeline_run_id: Mapped[int] = mapped_column(ForeignKey("pipeline_run.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(20))
    status: Mapped[TaskStatus] = mapped_column(
        Enum(TaskStatus, name="task_status", native_enum=False, length=20),
        default=TaskStatus.pending,
    )
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=1)
    queued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    inputs: Mapped[dict[str, Any]] = mapped_column(
        default=dict, doc="pinned when queued: dataset version and digest, commit"
    )
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    cache_key: Mapped[str | None] = mapped_column(String(64), default=None)
    cached_from_id: Mapped[int | None] = mapped_column(
        ForeignKey("task_run.id", ondelete="SET NULL"), default=None
    )

    run: Mapped[PipelineRun] = relationship(back_populates="tasks")
