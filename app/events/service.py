"""Record domain events in the caller's transaction, so an event exists iff its change does,
and with it the outbound webhook deliveries it causes."""

from typing import Any

from sqlalchemy.orm import Session

from app.events.models import Event
from app.events.types import EventType, declared


def record(
    session: Session,
    type_: EventType,
    subject: str,
    payload: dict[str, Any],
    actor: str | None = None,
) -> Event:
    """Only declared types (app/events/types.py), so every event can be subscribed to."""
    from app.subscriptions.service import fan_out  # subscriptions read events; not the reverse

    event = Event(type=declared(type_).value, subject=subject, payload=payload, actor=actor)
    session.add(event)
    session.flush()
    fan_out(session, event)
    return event
