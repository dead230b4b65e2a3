"""The transactional outbox: a job is a row written with the change that caused it.

A relay hands rows to the broker after commit; a row is marked dispatched only once the
broker has accepted it, so a broker outage delays jobs but loses none. Delivery is at least
once: every job handler must find work already done and do nothing.
"""

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Index, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.core.db import Base, BigId, utcnow

PENDING_IDS_KEY = "flywheel.outbox.pending"
RELAY_BATCH = 100


class OutboxMessage(Base):
    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_dispatched_at_available_at", "dispatched_at", "available_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    available_at: Mapped[datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)


def enqueue(
    session: Session, task: str, payload: dict[str, Any], *, delay: timedelta | None = None
) -> OutboxMessage:
    message = OutboxMessage(
        task=task, payload=payload, available_at=utcnow() + (delay or timedelta())
    )
    session.add(message)
    session.flush()
    session.info.setdefault(PENDING_IDS_KEY, []).append(message.id)
    return message


Publish = Callable[[OutboxMessage], None]


def relay(
    session: Session,
    publish: Publish,
    *,
    ids: Sequence[int] | None = None,
    limit: int = RELAY_BATCH,
) -> int:
    """Publish due rows (oldest first); rows other relays hold are skipped, not waited for."""
    stmt = (
        select(OutboxMessage)
        .where(OutboxMessage.dispatched_at.is_(None), OutboxMessage.available_at <= utcnow())
        .order_by(OutboxMessage.id)
        .limit(limit)
    )
    if ids is not None:
        stmt = stmt.where(OutboxMessage.id.in_(ids))
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    sent = 0
    for message in session.scalars(stmt).all():
        message.attempts += 1
        try:
            publish(message)
        except Exception as exc:  # the broker is down: keep the row for the next pass
            message.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            break
        message.dispatched_at = utcnow()
        message.last_error = None
        sent += 1
    return sent
