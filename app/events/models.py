from datetime import datetime
from typing import Any

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, BigId, utcnow


class Event(Base):
    """A domain event (version created, alias moved, ...), written in the transaction that
    caused it; outbound webhooks deliver from here."""

    __tablename__ = "event"
    __table_args__ = (Index("ix_event_subject_id", "subject", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    type: Mapped[str] = mapped_column(String(100), index=True)
    subject: Mapped[str] = mapped_column(String(500), doc="what it is about, e.g. model:churn")
    payload: Mapped[dict[str, Any]] = mapped_column()
    actor: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
