"""Alert rules: pending, firing once, resolving once, on serving, quality and fairness."""

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import unit_of_work, utcnow
from app.core.jobs import run_job
from app.events.models import Event
from app.monitoring import alerts
from app.monitoring.jobs import ALERTS_JOB
from app.monitoring.models import AlertRule, Feedback
from app.subscriptions.schemas import SubscriptionCreate
from tests.conftest import InlineJobs
from tests.deployments import traffic


@pytest.fixture
def deployed(api: TestClient, versions: None) -> None:
    body = {"name": "churn", "variants": [{"name": "blue", "model": "churn/1"}]}
    assert api.post("/api/v1/deployments", json=body).status_code == 201


def rule(api: TestClient, **overrides: Any) -> dict[str, Any]:
    body = {
        "name": "errors",
        "deployment": "churn",
        "metric": "error_rate",
        "operator": ">",
        "threshold": 0.05,
        "window": "5m",
    } | overrides
    created = api.post("/api/v1/alert-rules", json=body)
    assert created.status_code == 201, created.text
    return dict(created.json())


def evaluate(session_factory: sessionmaker[Session], rule_id: int, after: timedelta) -> None:
    with unit_of_work(session_factory) as session:
        found = session.get(AlertRule, rule_id)
        assert found is not None
        alerts.evaluate(session, found, now=utcnow() + after)


def fired(session_factory: sessionmaker[Session]) -> list[str]:
    with session_factory() as session:
        return list(
            session.scalars(
                select(Event.type).where(Event.type.like("alert.%")).order_by(Event.id)
            ).all()
        )


def test_fires_once_while_it_holds_and_resolves_once(
    api: TestClient,
    deployed: None,
    jobs: InlineJobs,
    session_factory: sessionmaker[Session],
) -> None:
    created = rule(api)
    traffic.record(session_factory, "churn", "blue", 40, errors=4)  # 10% 5xx
    run_job(jobs.ctx, ALERTS_JOB, {})
    run_job(jobs.ctx, ALERTS_JOB, {})  # still true: no second alert
    [alert] = api.get("/api/v1/alerts", params={"state": "firing"}).json()["items"]
    assert alert["value"] == pytest.approx(0.1) and "error_rate" in alert["message"]
    assert api.get(f"/api/v1/alert-rules/{created['id']}").json()["state"] == "firing"
    assert fired(session_factory) == ["alert.fired"]
    evaluate(session_factory, created["id"], timedelta(minutes=10))  # the window moved on
    assert api.get("/api/v1/alerts", params={"state": "firing"}).json()["items"] == []
    [resolved] = api.get("/api/v1/alerts", params={"state": "resolved"}).json()["items"]
    assert resolved["resolved_at"] is not None
    assert fired(session_factory) == ["alert.fired", "alert.resolved"]


def test_a_condition_must_hold_for_its_duration(
    api: TestClient, deployed: None, session_factory: sessionmaker[Session]
) -> None:
    created = rule(api, metric="latency_p99_ms", threshold=50, for_seconds=60, window="10m")
    traffic.record(session_factory, "churn", "blue", 20, latency_ms=120.0)
    evaluate(session_factory, created["id"], timedelta(0))
    state = api.get(f"/api/v1/alert-rules/{created['id']}").json()
    assert state["state"] == "pending" and state["last_value"] > 100
    assert api.get("/api/v1/alerts").json()["items"] == []
    evaluate(session_factory, created["id"], timedelta(seconds=61))
    assert api.get(f"/api/v1/alert-rules/{created['id']}").json()["state"] == "firing"


def test_quality_and_fairness_rules(
    api: TestClient, deployed: None, session_factory: sessionmaker[Session]
) -> None:
    ids = traffic.record(session_factory, "churn", "blue", 40, predictions=[1])
    items = [{"request_id": i, "label": 1 if n % 4 else 0} for n, i in enumerate(ids)]
    api.post("/api/v1/deployments/churn/feedback", json={"items": items})
    quality = rule(api, name="acc", metric="accuracy", operator="<", threshold=0.8, window="1h")
    fair = rule(
        api,
        name="parity",
        metric="parity_ratio",
        operator="<",
        threshold=0.8,
        window="1h",
        params={"attribute": "age", "min_group_size": 10},
    )
    evaluate(session_factory, quality["id"], timedelta(0))
    evaluate(session_factory, fair["id"], timedelta(0))
    assert api.get(f"/api/v1/alert-rules/{quality['id']}").json()["last_value"] == 0.75
    assert api.get(f"/api/v1/alert-rules/{quality['id']}").json()["state"] == "firing"
    # one group only (every logged row has age 30): no parity verdict, so no alert
    parity = api.get(f"/api/v1/alert-rules/{fair['id']}").json()
    assert parity["last_value"] is None and parity["state"] == "ok"


@pytest.mark.parametrize(
    ("overrides", "status", "fragment"),
    [
        ({"metric": "parity_ratio"}, 422, "attribute"),
        ({"metric": "feature_drift"}, 422, "feature"),
        ({"window": "forever"}, 422, "duration"),
        ({"deployment": "nope"}, 404, "nope"),
        ({"operator": "!="}, 422, "operator"),
    ],
)
def test_bad_rules_are_refused(
    api: TestClient, deployed: None, overrides: dict[str, Any], status: int, fragment: str
) -> None:
    body = {
        "name": "x",
        "deployment": "churn",
        "metric": "error_rate",
        "operator": ">",
        "threshold": 0.1,
    } | overrides
    answer = api.post("/api/v1/alert-rules", json=body)
    assert answer.status_code == status and fragment in answer.text


@pytest.mark.parametrize("field", ["name", "threshold", "window", "for_seconds", "active"])
def test_patching_a_field_that_always_has_a_value_to_null_is_refused(
    api: TestClient, deployed: None, field: str
) -> None:
    created = rule(api)
    answer = api.patch(f"/api/v1/alert-rules/{created['id']}", json={field: None})
    assert answer.status_code == 422, answer.text
    [detail] = answer.json()["error"]["details"]
    assert detail["loc"] == ["body", field] and "cannot be null" in detail["message"]
    assert api.get(f"/api/v1/alert-rules/{created['id']}").json() == created


def test_patching_params_to_null_clears_them_unless_the_metric_needs_them(
    api: TestClient, deployed: None
) -> None:
    created = rule(api, params={"variant": "blue"})
    cleared = api.patch(f"/api/v1/alert-rules/{created['id']}", json={"params": None})
    assert cleared.status_code == 200 and cleared.json()["params"] == {}
    drift = rule(api, metric="feature_drift", params={"feature": "age"})
    refused = api.patch(f"/api/v1/alert-rules/{drift['id']}", json={"params": None})
    assert refused.status_code == 422 and "params.feature" in refused.text
    assert api.get(f"/api/v1/alert-rules/{drift['id']}").json()["params"] == {"feature": "age"}
    bounded = api.patch(f"/api/v1/alert-rules/{drift['id']}", json={"for_seconds": -1})
    assert bounded.status_code == 422


def test_a_rule_that_cannot_be_evaluated_shows_error_and_alerts_once(
    api: TestClient,
    deployed: None,
    jobs: InlineJobs,
    session_factory: sessionmaker[Session],
) -> None:
    traffic.record(session_factory, "churn", "blue", 40, predictions=[1])  # rows have `age`
    created = rule(
        api,
        name="parity",
        metric="parity_ratio",
        operator="<",
        threshold=0.8,
        window="1h",
        params={"attribute": "region"},
    )
    run_job(jobs.ctx, ALERTS_JOB, {})
    run_job(jobs.ctx, ALERTS_JOB, {})  # still failing: no second alert
    state = api.get(f"/api/v1/alert-rules/{created['id']}").json()
    assert state["state"] == "error" and "'region'" in state["error"], state
    assert state["last_evaluated_at"] is not None
    [alert] = api.get("/api/v1/alerts", params={"state": "error"}).json()["items"]
    assert "cannot evaluate parity_ratio" in alert["message"] and "region" in alert["message"]
    assert fired(session_factory) == ["alert.error"]
    SubscriptionCreate(url="https://ops.example/hooks", event_types=["alert.error"])

    fixed = api.patch(f"/api/v1/alert-rules/{created['id']}", json={"params": {"attribute": "age"}})
    assert fixed.status_code == 200, fixed.text
    run_job(jobs.ctx, ALERTS_JOB, {})
    state = api.get(f"/api/v1/alert-rules/{created['id']}").json()
    assert state["state"] == "ok" and state["error"] is None
    assert api.get("/api/v1/alerts", params={"state": "error"}).json()["items"] == []
    [resolved] = api.get("/api/v1/alerts", params={"state": "resolved"}).json()["items"]
    assert resolved["id"] == alert["id"] and resolved["resolved_at"] is not None
    assert fired(session_factory) == ["alert.error", "alert.resolved"]


def test_an_unexpected_failure_is_an_error_state_too_and_a_firing_alert_stays_firing(
    api: TestClient,
    deployed: None,
    jobs: InlineJobs,
    session_factory: sessionmaker[Session],
) -> None:
    created = rule(api)
    traffic.record(session_factory, "churn", "blue", 40, errors=4)
    run_job(jobs.ctx, ALERTS_JOB, {})
    assert api.get(f"/api/v1/alert-rules/{created['id']}").json()["state"] == "firing"
    with unit_of_work(session_factory) as session:  # a rule stored before params were checked
        found = session.get(AlertRule, created["id"])
        assert found is not None
        found.metric, found.params = "accuracy", {"min_samples": "lots"}
    run_job(jobs.ctx, ALERTS_JOB, {})
    state = api.get(f"/api/v1/alert-rules/{created['id']}").json()
    assert state["state"] == "error" and "ValueError" in state["error"]
    assert len(api.get("/api/v1/alerts", params={"state": "firing"}).json()["items"]) == 1
    with unit_of_work(session_factory) as session:
        found = session.get(AlertRule, created["id"])
        assert found is not None
        found.metric, found.params = "error_rate", {}
    run_job(jobs.ctx, ALERTS_JOB, {})  # evaluable again, still breaching: firing, no new alert
    assert api.get(f"/api/v1/alert-rules/{created['id']}").json()["state"] == "firing"
    assert fired(session_factory) == ["alert.fired", "alert.error", "alert.resolved"]
    assert len(api.get("/api/v1/alerts", params={"state": "firing"}).json()["items"]) == 1


def test_an_accuracy_rule_judges_the_usable_labels_when_stored_ones_are_bad(
    api: TestClient, deployed: None, session_factory: sessionmaker[Session]
) -> None:
    good = traffic.record(session_factory, "churn", "blue", 40, predictions=[1])
    items = [{"request_id": i, "label": 1 if n % 2 else 0} for n, i in enumerate(good)]
    assert api.post("/api/v1/deployments/churn/feedback", json={"items": items}).status_code == 200
    bad = traffic.record(session_factory, "churn", "blue", 5, predictions=[1])
    with unit_of_work(session_factory) as session:
        for request_id in bad:
            session.add(Feedback(deployment="churn", request_id=request_id, labels=[7]))
    quality = rule(api, name="acc", metric="accuracy", operator="<", threshold=0.8, window="1h")
    evaluate(session_factory, quality["id"], timedelta(0))
    state = api.get(f"/api/v1/alert-rules/{quality['id']}").json()
    assert state["last_value"] == 0.5 and state["state"] == "firing", state


@pytest.mark.parametrize(
    "params",
    [{"min_samples": "lots"}, {"min_samples": 0}, {"k": 1.5}, {"min_group_size": True}],
)
def test_numeric_params_are_checked_when_the_rule_is_written(
    api: TestClient, deployed: None, params: dict[str, Any]
) -> None:
    body = {"name": "x", "deployment": "churn", "metric": "accuracy", "operator": "<"}
    answer = api.post("/api/v1/alert-rules", json=body | {"threshold": 0.8, "params": params})
    assert answer.status_code == 422 and f"params.{next(iter(params))}" in answer.text
