"""Subscriptions and the fan-out of events into deliveries, in the event's own transaction:
an event that commits has its deliveries queued (outbox), one that rolls back has none."""

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.service import Principal
from app.core.config import Settings
from app.core.errors import NotFound, Unprocessable
from app.core.outbox import enqueue
from app.core.pagination import PageParams, keyset_page
from app.core.secrets import encrypt
from app.events.models import Event
from app.subscriptions import webhooks
from app.subscriptions.models import DeliveryStatus, OutboundDelivery, Subscription
from app.subscriptions.schemas import SubscriptionCreate, SubscriptionUpdate

DELIVER_JOB = "subscriptions.deliver"


def check_destination(settings: Settings, url: str) -> None:
    """Refuse a URL webhooks could never be sent to (private, loopback, link-local, metadata),
    as delivery would; a name that does not resolve yet is accepted (delivery retries it)."""
    try:
        webhooks.resolve_destination(url, settings.webhook_allowed_hosts)
    except webhooks.RefusedDestination as exc:
        raise Unprocessable(
            exc.message,
            code="destination_refused",
            details={"url": url, "address": exc.address, "address_kind": exc.kind},
        ) from None
    except webhooks.UnresolvedDestination:
        pass


def create(
    session: Session, settings: Settings, data: SubscriptionCreate, *, by: Principal
) -> tuple[Subscription, str]:
    check_destination(settings, data.url)
    secret = webhooks.new_secret()
    subscription = Subscription(
        url=data.url,
        event_types=data.event_types,
        description=data.description,
        secret_encrypted=encrypt(settings, secret),
        created_by=by.name,
    )
    session.add(subscription)
    session.flush()
    return subscription, secret


def get_or_raise(session: Session, subscription_id: int) -> Subscription:
    subscription = session.get(Subscription, subscription_id)
    if subscription is None:
        raise NotFound(f"subscription {subscription_id} does not exist")
    return subscription


def list_subscriptions(
    session: Session, page: PageParams
) -> tuple[Sequence[Subscription], str | None]:
    return keyset_page(session, select(Subscription), Subscription.id, page)


def update(
    session: Session, settings: Settings, subscription_id: int, data: SubscriptionUpdate
) -> Subscription:
    subscription = get_or_raise(session, subscription_id)
    if data.url is not None:
        check_destination(settings, data.url)
    for field in ("url", "event_types", "description"):
        value = getattr(data, field)
        if value is not None:
            setattr(subscription, field, value)
    if data.active is not None:
        subscription.active = data.active
        subscription.disabled_reason = None if data.active else "disabled by hand"
    session.flush()
    return subscription


def delete(session: Session, subscription_id: int) -> None:
    session.delete(get_or_raise(session, subscription_id))
    session.flush()


def wants(subscription: Subscription, event_type: str) -> bool:
    return any(
        pattern == "*"
        or pattern == event_type
        or (pattern.endswith(".*") and event_type.startswith(pattern[:-1]))
        for pattern in subscription.event_types
    )


def fan_out(session: Session, event: Event) -> None:
    subscriptions = session.scalars(select(Subscription).where(Subscription.active.is_(True)))
    for subscription in subscriptions:
        if not wants(subscription, event.type):
            continue
        delivery = OutboundDelivery(
            subscription_id=subscription.id,
            event_id=event.id,
            event_type=event.type,
            message_id=f"msg_{event.id}_{subscription.id}",
            body={
                "type": event.type,
                "timestamp": event.created_at.isoformat(),
                "data": {"subject": event.subject, "actor": event.actor, **event.payload},
            },
        )
        session.add(delivery)
        session.flush()
        enqueue(session, DELIVER_JOB, {"delivery_id": delivery.id})


def deliveries(
    session: Session, subscription_id: int, page: PageParams
) -> tuple[Sequence[OutboundDelivery], str | None]:
    get_or_raise(session, subscription_id)
    stmt = select(OutboundDelivery).where(OutboundDelivery.subscription_id == subscription_id)
    return keyset_page(session, stmt, OutboundDelivery.id, page)


def redeliver(session: Session, subscription_id: int, delivery_id: int) -> OutboundDelivery:
    """Send again now, whatever happened before (the receiver dedupes on webhook-id)."""
    delivery = session.get(OutboundDelivery, delivery_id)
    if delivery is None or delivery.subscription_id != subscription_id:
        raise NotFound(f"delivery {delivery_id} of subscription {subscription_id} does not exist")
    delivery.status = DeliveryStatus.pending
    delivery.next_attempt_at = None
    enqueue(session, DELIVER_JOB, {"delivery_id": delivery.id, "manual": True})
    return delivery
