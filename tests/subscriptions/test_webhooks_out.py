"""Outbound webhooks to a real HTTP receiver: signatures, retries, Retry-After, 410, refusal
of private addresses at delivery, the delivery log and redelivery."""

import base64
import dataclasses
import hashlib
import hmac
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.core.config import Settings
from tests.conftest import InlineJobs
from tests.live import live_server
from tests.subscriptions.receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    target = Receiver()
    with live_server(target.app) as base:
        yield target, f"{base}/hook"


@pytest.fixture
def outbound(jobs: InlineJobs, settings: Settings, app: FastAPI) -> Settings:
    """Loopback allowed (the receiver runs here), quick retries, three attempts."""
    allowed = settings.model_copy(
        update={
            "webhook_allowed_hosts": ["127.0.0.1"],
            "webhook_backoff_seconds": 0.05,
            "webhook_max_attempts": 3,
        }
    )
    app.state.settings = allowed  # registration checks the destination too
    jobs.ctx = dataclasses.replace(jobs.ctx, settings=allowed)
    return allowed


def subscribe(api: TestClient, url: str, types: list[str]) -> dict[str, Any]:
    created = api.post("/api/v1/subscriptions", json={"url": url, "event_types": types})
    assert created.status_code == 201, created.text
    return dict(created.json())


def move_alias(api: TestClient, version: int = 2) -> None:
    moved = api.put("/api/v1/models/churn/aliases/champion", json={"version": version})
    assert moved.status_code == 200, moved.text


def deliveries(api: TestClient, subscription: dict[str, Any]) -> list[dict[str, Any]]:
    return list(api.get(f"/api/v1/subscriptions/{subscription['id']}/deliveries").json()["items"])


def test_a_delivery_is_signed_per_standard_webhooks_and_logged(
    api: TestClient, versions: None, jobs: InlineJobs, outbound: Settings, receiver: Any
) -> None:
    target, url = receiver
    subscription = subscribe(api, url, ["model.*"])
    ignored = subscribe(api, url, ["rollout.*"])
    move_alias(api)
    jobs.run()
    [got] = target.received
    headers, body = got["headers"], got["body"]
    key = base64.b64decode(subscription["secret"].removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert b'"type":"model.alias_moved"' in body and b'"alias":"champion"' in body
    [logged] = deliveries(api, subscription)
    assert logged["status"] == "delivered" and logged["attempts"][0]["status_code"] == 204
    assert logged["message_id"] == headers["webhook-id"]
    assert deliveries(api, ignored) == []


def test_retries_honour_retry_after_then_succeed(
    api: TestClient, versions: None, jobs: InlineJobs, outbound: Settings, receiver: Any
) -> None:
    target, url = receiver
    target.answers = [(503, {"Retry-After": "1"}), (200, {})]
    subscription = subscribe(api, url, ["*"])
    move_alias(api)
    jobs.run()
    assert len(target.received) == 2
    assert target.received[1]["at"] - target.received[0]["at"] >= 0.9  # waited as asked
    first, second = target.received
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]  # same message
    [logged] = deliveries(api, subscription)
    assert [a["status_code"] for a in logged["attempts"]] == [503, 200]
    assert logged["status"] == "delivered"


def test_gives_up_after_the_last_attempt_and_redelivers_by_hand(
    api: TestClient, versions: None, jobs: InlineJobs, outbound: Settings, receiver: Any
) -> None:
    target, url = receiver
    target.answers = [(500, {})] * 3
    subscription = subscribe(api, url, ["model.alias_moved"])
    move_alias(api)
    jobs.run()
    [logged] = deliveries(api, subscription)
    assert logged["status"] == "failed" and len(logged["attempts"]) == 3
    again = api.post(
        f"/api/v1/subscriptions/{subscription['id']}/deliveries/{logged['id']}/redeliver"
    )
    assert again.status_code == 202
    jobs.run()
    [logged] = deliveries(api, subscription)
    assert logged["status"] == "delivered" and len(logged["attempts"]) == 4


def test_410_disables_the_endpoint(
    api: TestClient, versions: None, jobs: InlineJobs, outbound: Settings, receiver: Any
) -> None:
    target, url = receiver
    target.answers = [(410, {})]
    subscription = subscribe(api, url, ["model.alias_moved"])
    move_alias(api)
    jobs.run()
    state = api.get(f"/api/v1/subscriptions/{subscription['id']}").json()
    assert state["active"] is False and "410" in state["disabled_reason"]
    move_alias(api, 1)
    jobs.run()
    assert len(target.received) == 1 and len(deliveries(api, subscription)) == 1


def test_a_private_address_no_longer_allowlisted_is_refused_at_delivery(
    api: TestClient, versions: None, jobs: InlineJobs, outbound: Settings, receiver: Any
) -> None:
    target, url = receiver
    subscription = subscribe(api, url, ["model.alias_moved"])
    unlisted = outbound.model_copy(update={"webhook_allowed_hosts": []})
    jobs.ctx = dataclasses.replace(jobs.ctx, settings=unlisted)  # the operator removed it
    move_alias(api)
    jobs.run()
    assert target.received == []
    [logged] = deliveries(api, subscription)
    assert logged["status"] == "failed"
    assert "loopback address" in logged["attempts"][0]["error"]
    assert len(logged["attempts"]) == 1  # refused for good, not retried


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"url": "ftp://x", "event_types": ["*"]}, "url"),
        ({"url": "https://example.com", "event_types": ["model.exploded"]}, "unknown event"),
        ({"url": "https://example.com", "event_types": []}, "event_types"),
    ],
)
def test_bad_subscriptions_are_refused(
    api: TestClient, body: dict[str, Any], fragment: str
) -> None:
    answer = api.post("/api/v1/subscriptions", json=body)
    assert answer.status_code == 422 and fragment in answer.text
