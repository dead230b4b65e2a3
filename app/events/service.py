"""Record domain events in the caller's transaction, so an event exists iff its change does,
and with it the outbound webhook deliveries it causes."""

from typing import Any

from sqlalchemy.orm import Session

from app.events.models import Event


def record(
    session: Session, type_: str, subject: str, payload: dict[str, Any], actor: str | None = None
) -> Event:
    from app.subscriptions.service import fan_out  # subscriptions read events; not the reverse

    event = Event(type=type_, subject=subject, payload=payload, actor=actor)
    session.add(event)
    session.flush()
    fan_out(session, event)
    return event
