import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Enum, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, BigId, utcnow


class ImportanceStatus(enum.StrEnum):
    pending = "pending"
    running = "running"
    ready = "ready"
    failed = "failed"


class FeatureImportance(Base):
    """Global importance of a model version over a sample of data, and the job computing it.

    One row per (version, data digest, sample size): asking again returns the cached result.
    """

    __tablename__ = "feature_importance"
    __table_args__ = (UniqueConstraint("model_version_id", "data_digest", "sample_rows"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_version.id", ondelete="CASCADE")
    )
    data_digest: Mapped[str] = mapped_column(String(64), doc="sha256 of the data sampled from")
    source: Mapped[str] = mapped_column(String(20), default="reference")
    dataset_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("dataset_version.id", ondelete="SET NULL"), default=None, index=True
    )
    sample_rows: Mapped[int] = mapped_column(doc="rows asked for; fewer when the data is smaller")
    seed: Mapped[int] = mapped_column(default=0)
    max_evals: Mapped[int | None] = mapped_column(default=None)
    status: Mapped[ImportanceStatus] = mapped_column(
        Enum(ImportanceStatus, name="importance_status", native_enum=False, length=20),
        default=ImportanceStatus.pending,
    )
    status_message: Mapped[str | None] = mapped_column(Text, default=None)
    sample_size: Mapped[int | None] = mapped_column(default=None)
    explainer: Mapped[str | None] = mapped_column(String(20), default=None)
    output_space: Mapped[str | None] = mapped_column(String(20), default=None)
    classes: Mapped[list[Any] | None] = mapped_column(default=None)
    features: Mapped[list[Any] | None] = mapped_column(
        default=None, doc="[{feature, mean_abs_shap, rank, per_class}], most important first"
    )
    approximations: Mapped[list[str] | None] = mapped_column(default=None)
    duration_seconds: Mapped[float | None] = mapped_column(default=None)
    requested_by: Mapped[str | None] = mapped_column(String(200), default=None)
    computed_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
