"""Sending one delivery: signed, never while holding a transaction, retried through the outbox
with backoff and jitter (or the receiver's Retry-After), given up after the last attempt; a
410 Gone disables the endpoint for good."""

import json
import random
import time
from datetime import timedelta
from typing import Any

import httpx

from app.core.db import utcnow
from app.core.jobs import JobContext, job
from app.core.outbox import enqueue
from app.core.secrets import decrypt
from app.subscriptions import webhooks
from app.subscriptions.models import DeliveryStatus, OutboundDelivery, Subscription
from app.subscriptions.service import DELIVER_JOB

TIMEOUT_SECONDS = 10.0
_rng = random.Random()  # noqa: S311 - jitter, not security


@job(DELIVER_JOB, max_retries=0, transactional=False)
def deliver(ctx: JobContext, delivery_id: int, manual: bool = False) -> None:
    settings = ctx.settings
    with ctx.session_factory() as session:
        delivery = session.get(OutboundDelivery, delivery_id)
        if delivery is None or delivery.status != DeliveryStatus.pending:
            return
        subscription = session.get(Subscription, delivery.subscription_id)
        if subscription is None:
            return
        active, url = subscription.active, subscription.url
        secret = decrypt(settings, subscription.secret_encrypted)
        body = json.dumps(delivery.body, separators=(",", ":")).encode()
        message_id, attempt = delivery.message_id, len(delivery.attempts) + 1
    if not active and not manual:
        _finish(ctx, delivery_id, DeliveryStatus.failed, {"error": "the subscription is disabled"})
        return
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "Flywheel-Webhooks/1",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhooks.sign(secret, message_id, timestamp, body),
    }
    started = time.perf_counter()
    status: int | None = None
    wait: str | None = None
    error: str | None = None
    try:
        destination = webhooks.resolve_destination(url, settings.webhook_allowed_hosts)
        status, wait = _post(destination, body, headers)
    except webhooks.RefusedDestination as exc:
        _finish(ctx, delivery_id, DeliveryStatus.failed, {"error": exc.message})
        return
    except webhooks.UnresolvedDestination as exc:  # DNS may come back: retried like the rest
        error = str(exc)[:300]
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    outcome: dict[str, Any] = {
        "status_code": status,
        "error": error,
        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
    }
    if status is not None and 200 <= status < 300:
        _finish(ctx, delivery_id, DeliveryStatus.delivered, outcome)
    elif status == 410:
        _finish(
            ctx, delivery_id, DeliveryStatus.failed, outcome, disable="410 Gone from the endpoint"
        )
    elif attempt >= settings.webhook_max_attempts:
        outcome["error"] = outcome["error"] or f"gave up after {attempt} attempts"
        _finish(ctx, delivery_id, DeliveryStatus.failed, outcome)
    else:
        delay = timedelta(
            seconds=webhooks.backoff(
                attempt,
                settings.webhook_backoff_seconds,
                settings.webhook_backoff_cap_seconds,
                _rng,
            )
        )
        delay = max(delay, webhooks.retry_after(wait, utcnow()) or timedelta(0))
        _finish(ctx, delivery_id, DeliveryStatus.pending, outcome, retry_in=delay)


def _post(
    destination: webhooks.Destination, body: bytes, headers: dict[str, str]
) -> tuple[int, str | None]:
    """POST to the checked addresses only (the next one if one cannot be reached), never to
    whatever the name resolves to by now. Redirects are not followed."""
    with httpx.Client(timeout=TIMEOUT_SECONDS) as client:
        for index, address in enumerate(destination.addresses):
            request = webhooks.pinned_request(client, destination, address, body, headers)
            try:
                response = client.send(request)
            except httpx.ConnectError:
                if index == len(destination.addresses) - 1:
                    raise
                continue
            return response.status_code, response.headers.get("retry-after")
    raise httpx.ConnectError(f"{destination.host} resolved to no address")


def _finish(
    ctx: JobContext,
    delivery_id: int,
    status: DeliveryStatus,
    outcome: dict[str, Any],
    *,
    retry_in: timedelta | None = None,
    disable: str | None = None,
) -> None:
    with ctx.transaction() as session:
        delivery = session.get(OutboundDelivery, delivery_id)
        if delivery is None:
            return
        delivery.attempts = [*delivery.attempts, {"at": utcnow().isoformat(), **outcome}]
        delivery.status = status
        delivery.next_attempt_at = None if retry_in is None else utcnow() + retry_in
        if status == DeliveryStatus.delivered:
            delivery.delivered_at = utcnow()
        if retry_in is not None:
            enqueue(session, DELIVER_JOB, {"delivery_id": delivery_id}, delay=retry_in)
        if disable is not None:
            subscription = session.get(Subscription, delivery.subscription_id)
            if subscription is not None:
                subscription.active, subscription.disabled_reason = False, disable
