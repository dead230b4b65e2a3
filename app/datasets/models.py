from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.core.db import Base, BigId, utcnow


class Dataset(Base):
    __tablename__ = "dataset"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(250), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    versions: Mapped[list["DatasetVersion"]] = relationship(
        back_populates="dataset", passive_deletes=True, order_by="DatasetVersion.version"
    )


class DatasetVersion(Base):
    """Immutable content, identified by its sha256 digest; the same bytes are one version."""

    __tablename__ = "dataset_version"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version"),
        UniqueConstraint("dataset_id", "digest"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column()
    digest: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(20))
    uri: Mapped[str] = mapped_column(String(2000), doc="where the bytes live on the artifact store")
    source_uri: Mapped[str | None] = mapped_column(String(2000), default=None)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(BigInteger)
    schema: Mapped[dict[str, Any]] = mapped_column()
    profile: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    dataset: Mapped[Dataset] = relationship(back_populates="versions")
