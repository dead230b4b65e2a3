"""Record domain events in the caller's transaction, so an event exists iff its change does."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.events.models import Event


def record(
    session: Session, type_: str, subject: str, payload: dict[str, Any], actor: str | None = None
) -> Event:
    event = Event(type=type_, subject=subject, payload=payload, actor=actor)
    session.add(event)
    return event


def list_for_subject(session: Session, subject: str, type_: str | None = None) -> Sequence[Event]:
    stmt = select(Event).where(Event.subject == subject).order_by(Event.id)
    if type_ is not None:
        stmt = stmt.where(Event.type == type_)
    return session.scalars(stmt).all()
