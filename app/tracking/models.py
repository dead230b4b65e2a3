import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Enum,
    Float,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.core.db import Base, BigId, utcnow


class RunStatus(enum.StrEnum):
    running = "running"
    finished = "finished"
    failed = "failed"
    killed = "killed"

    @property
    def terminal(self) -> bool:
        return self is not RunStatus.running


class Experiment(Base):
    __tablename__ = "experiment"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(250), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    archived_at: Mapped[datetime | None] = mapped_column(default=None)


class Run(Base):
    __tablename__ = "run"
    __table_args__ = (
        Index("ix_run_experiment_id_start_time", "experiment_id", "start_time"),
        Index("ix_run_experiment_id_status", "experiment_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiment.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(250), default="")
    status: Mapped[RunStatus] = mapped_column(
        Enum(RunStatus, name="run_status", native_enum=False, length=20),
        default=RunStatus.running,
    )
    start_time: Mapped[datetime] = mapped_column(default=utcnow)
    end_time: Mapped[datetime | None] = mapped_column(default=None)
    duration_ms: Mapped[int | None] = mapped_column(BigInteger, default=None)
    code_version: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    params: Mapped[list["RunParam"]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="RunParam.key"
    )
    tags: Mapped[list["RunTag"]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="RunTag.key"
    )
    latest_metrics: Mapped[list["LatestMetric"]] = relationship(
        viewonly=True, order_by="LatestMetric.key"
    )
    inputs: Mapped[list["RunInput"]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )


# Param and tag values stay within 500 characters so (key, value) fits a Postgres B-tree index
# entry even in 4-byte UTF-8; long text belongs in an artifact.
class RunParam(Base):
    __tablename__ = "run_param"
    __table_args__ = (Index("ix_run_param_key_value", "key", "value", "run_id"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(String(500))


class RunTag(Base):
    __tablename__ = "run_tag"
    __table_args__ = (Index("ix_run_tag_key_value", "key", "value", "run_id"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(String(500))


class Metric(Base):
    """Every logged point; the history behind GET /runs/{id}/metrics/{key}.

    No foreign key on run_id: a per-row check would cost about 40% of the bulk insert. The
    writer locks the run row (FOR KEY SHARE) once per batch instead. Runs are never deleted
    today; whatever deletes runs later must delete their history with them.
    """

    __tablename__ = "metric"
    __table_args__ = (Index("ix_metric_run_id_key_step", "run_id", "key", "step"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str] = mapped_column(String(250))
    value: Mapped[float] = mapped_column(Float)
    step: Mapped[int] = mapped_column(BigInteger, default=0)
    timestamp: Mapped[int] = mapped_column(BigInteger, doc="milliseconds since the epoch")


class LatestMetric(Base):
    """The newest point per (run, key) — by step, then timestamp — so search never scans history."""

    __tablename__ = "latest_metric"
    __table_args__ = (Index("ix_latest_metric_key_value", "key", "value", "run_id"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    step: Mapped[int] = mapped_column(BigInteger)
    timestamp: Mapped[int] = mapped_column(BigInteger)


class RunInput(Base):
    __tablename__ = "run_input"

    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)
    dataset_version_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_version.id", ondelete="RESTRICT"), primary_key=True, index=True
    )
    context: Mapped[str] = mapped_column(String(50), default="training")


class RunArtifact(Base):
    __tablename__ = "run_artifact"
    __table_args__ = (UniqueConstraint("run_id", "path"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(1000))
    digest: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
