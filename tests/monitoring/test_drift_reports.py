"""Drift reports on logged traffic against the reference profile stored with the data set."""

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.broker import make_celery
from app.core.config import Settings
from app.core.db import unit_of_work, utcnow
from app.core.jobs import run_job
from app.events.models import Event
from app.monitoring import drift_reports
from app.monitoring.jobs import ALERTS_JOB
from app.monitoring.models import DriftReport, PredictionLog
from app.subscriptions.schemas import SubscriptionCreate
from app.training.jobs import TICK_JOB
from tests.conftest import InlineJobs
from tests.deployments import traffic
from tests.registry.helpers import FEATURES, churn_frame
from tests.training.conftest import retrain_spec

URL = "/api/v1/deployments/churn"


@pytest.fixture
def deployed(api: TestClient, versions: None) -> None:
    body = {"name": "churn", "variants": [{"name": "blue", "model": "churn/1"}]}
    assert api.post("/api/v1/deployments", json=body).status_code == 201


def rows(seed: int, shift: dict[str, float] | None = None) -> list[dict[str, Any]]:
    frame = churn_frame(rows=300, seed=seed)[FEATURES]
    for column, amount in (shift or {}).items():
        frame[column] = frame[column] + amount
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in frame.to_dict("records")
    ]


def report(api: TestClient, jobs: InlineJobs, status: str = "ready", **body: Any) -> dict[str, Any]:
    created = api.post(f"{URL}/drift-reports", json={"window": "1h"} | body)
    assert created.status_code == 202, created.text
    assert created.json()["status"] == "pending"
    jobs.run()
    done = api.get(f"{URL}/drift-reports/{created.json()['id']}").json()
    assert done["status"] == status, done
    return dict(done)


def events_of(session_factory: sessionmaker[Session], kind: str) -> list[dict[str, Any]]:
    with session_factory() as session:
        return list(session.scalars(select(Event.payload).where(Event.type == kind)).all())


def test_same_distribution_is_not_drift(
    api: TestClient, deployed: None, jobs: InlineJobs, session_factory: sessionmaker[Session]
) -> None:
    # the training generator itself (seed 7): its first 200 rows are the reference
    traffic.record(session_factory, "churn", "blue", 300, rows=rows(7), predictions=[0, 1])
    done = report(api, jobs)
    assert done["dataset_drifted"] is False and done["variant"] == "blue"
    features = done["result"]["features"]
    assert {f["method"] for name, f in features.items() if name != "city"} == {"ks"}
    assert features["city"]["method"] == "chisquare"
    assert not any(f["drifted"] for f in features.values())
    assert done["result"]["current_rows"] == 300


def test_shifted_inputs_drift_with_histograms_and_an_event(
    api: TestClient, deployed: None, jobs: InlineJobs, session_factory: sessionmaker[Session]
) -> None:
    shifted = rows(12, {"income": 30_000.0, "age": 20})
    traffic.record(session_factory, "churn", "blue", 300, rows=shifted, predictions=[1])
    done = report(api, jobs, share=0.5)
    features = done["result"]["features"]
    assert features["income"]["drifted"] and features["age"]["drifted"]
    assert not features["city"]["drifted"]
    assert done["dataset_drifted"] is True and done["drifted_share"] == pytest.approx(2 / 3)
    income = features["income"]
    assert income["p_value"] < 0.05 and income["threshold"] == 0.05
    assert len(income["reference_counts"]) == len(income["current_counts"]) > 2
    assert sum(income["current_counts"]) == 300
    prediction = done["result"]["prediction"]
    assert prediction["drifted"] and "churned" in prediction["reference"]
    with session_factory() as session:
        assert session.scalar(select(Event.payload).where(Event.type == "drift.detected"))
    # the same data judged with a distance and a loose threshold: no drift
    loose = report(api, jobs, numeric_method="wasserstein", thresholds={"wasserstein": 5.0})
    assert loose["result"]["features"]["income"]["method"] == "wasserstein"
    assert not loose["result"]["features"]["income"]["drifted"]

    alert = api.post(
        "/api/v1/alert-rules",
        json={
            "name": "drift",
            "deployment": "churn",
            "metric": "drifted_share",
            "operator": ">=",
            "threshold": 0.5,
            "window": "1h",
        },
    ).json()
    run_job(jobs.ctx, ALERTS_JOB, {})
    # the latest report (the loose one) has nothing drifted: no alert
    judged = api.get(f"/api/v1/alert-rules/{alert['id']}").json()
    assert judged["last_value"] == 0.0 and judged["state"] == "ok"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"window": "1h"}, "no predictions"),
        ({"window": "1h", "variant": "red"}, "red"),
        ({"window": "never"}, "duration"),
        ({"window": "1h", "numeric_method": "magic"}, "numeric_method"),
    ],
)
def test_reports_that_cannot_be_made_say_why(
    api: TestClient, deployed: None, body: dict[str, Any], fragment: str
) -> None:
    answer = api.post(f"{URL}/drift-reports", json=body)
    assert answer.status_code == 422 and fragment in answer.text


def test_drift_on_a_schedule(
    api: TestClient, deployed: None, session_factory: sessionmaker[Session]
) -> None:
    assert api.put(f"{URL}/drift-schedule", json={"cron": "every hour"}).status_code == 422
    schedule = api.put(f"{URL}/drift-schedule", json={"cron": "0 * * * *", "window": "2h"})
    assert schedule.status_code == 200, schedule.text
    with unit_of_work(session_factory) as session:
        drift_reports.due(session, utcnow())  # not due yet
        drift_reports.due(session, utcnow() + timedelta(hours=1, minutes=1))
    with session_factory() as session:
        [made] = session.scalars(select(DriftReport)).all()
        assert made.trigger == "schedule" and made.status == "pending"
        assert made.window_end - made.window_start == timedelta(hours=2)


def test_a_window_cut_at_the_cap_keeps_the_newest_requests_and_says_so(
    api: TestClient,
    deployed: None,
    jobs: InlineJobs,
    settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    # 200 older requests with shifted incomes, then 100 newer ones like the training data
    older = traffic.record(
        session_factory, "churn", "blue", 200, rows=rows(12, {"income": 30_000.0}), predictions=[1]
    )
    with unit_of_work(session_factory) as session:
        session.execute(
            update(PredictionLog)
            .where(PredictionLog.request_id.in_(older))
            .values(created_at=utcnow() - timedelta(minutes=10))
        )
    traffic.record(session_factory, "churn", "blue", 100, rows=rows(7), predictions=[0, 1])
    whole = report(api, jobs)
    assert whole["sampled"] is False and whole["requests_read"] == 300
    assert whole["requests_in_window"] == 300
    assert whole["result"]["features"]["income"]["drifted"]

    settings.drift_max_rows = 100  # the worker's cap, made small
    cut = report(api, jobs)
    assert cut["sampled"] is True
    assert (cut["requests_read"], cut["requests_in_window"]) == (100, 300)
    assert cut["result"]["window"] == {
        "sampled": True,
        "requests_read": 100,
        "requests_in_window": 300,
        "max_requests": 100,
    }
    assert cut["result"]["current_rows"] == 100
    # the newest 100 were judged: the shifted older incomes are not among them
    assert not cut["result"]["features"]["income"]["drifted"]
    assert sum(cut["result"]["features"]["income"]["current_counts"]) == 100


def test_a_window_too_small_for_a_verdict_says_insufficient_data_and_emits_nothing(
    api: TestClient,
    deployed: None,
    jobs: InlineJobs,
    settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    shifted = rows(12, {"income": 30_000.0, "age": 100})[:10]  # far out: drift even in ten
    traffic.record(session_factory, "churn", "blue", 10, rows=shifted, predictions=[1])
    alert = api.post(
        "/api/v1/alert-rules",
        json={
            "name": "drift",
            "deployment": "churn",
            "metric": "dataset_drift",
            "operator": ">=",
            "threshold": 1,
            "window": "1h",
        },
    ).json()
    small = report(api, jobs, status="insufficient_data")
    assert small["dataset_drifted"] is None and small["drifted_share"] is None
    assert small["result"]["current_rows"] == 10 and small["result"]["min_rows"] == 30
    assert "features" not in small["result"] and "at least 30" in small["result"]["reason"]
    assert small["sampled"] is False and small["requests_read"] == 10
    assert not events_of(session_factory, "drift.detected")
    assert not events_of(session_factory, "drift.feature_detected")
    run_job(jobs.ctx, ALERTS_JOB, {})
    judged = api.get(f"/api/v1/alert-rules/{alert['id']}").json()
    assert judged["last_value"] is None and judged["state"] == "ok"

    settings.drift_min_rows = 5  # the same ten rows are enough once the minimum allows them
    judged_now = report(api, jobs)
    assert judged_now["dataset_drifted"] is True
    assert judged_now["result"]["min_rows"] == 5
    assert events_of(session_factory, "drift.detected")


def test_one_drifted_feature_is_an_event_and_wakes_the_alert_and_policy_watching_it(
    api: TestClient, deployed: None, jobs: InlineJobs, session_factory: sessionmaker[Session]
) -> None:
    assert api.post("/api/v1/pipelines", json={"name": "retrain", "spec": retrain_spec()})
    policy = api.post(
        "/api/v1/policies",
        json={
            "name": "on-income",
            "deployment": "churn",
            "pipeline": "retrain",
            "triggers": {"drift": {"features": ["income"]}},
        },
    )
    assert policy.status_code == 201, policy.text
    rules = {
        metric: api.post(
            "/api/v1/alert-rules",
            json={
                "name": metric,
                "deployment": "churn",
                "metric": metric,
                "operator": ">=",
                "threshold": 1,
                "window": "1h",
                "params": {"feature": "income"} if metric == "feature_drift" else {},
            },
        ).json()["id"]
        for metric in ("feature_drift", "dataset_drift")
    }
    # only income moves: one feature in three, under the data-set rule's 0.5
    traffic.record(
        session_factory, "churn", "blue", 300, rows=rows(12, {"income": 30_000.0}), predictions=[1]
    )
    done = report(api, jobs)
    assert done["dataset_drifted"] is False and done["drifted_share"] == pytest.approx(1 / 3)
    assert not events_of(session_factory, "drift.detected")
    [event] = events_of(session_factory, "drift.feature_detected")
    assert event["report"] == done["id"] and event["drifted_features"] == ["income"]
    assert event["dataset_drifted"] is False and list(event["features"]) == ["income"]
    income = event["features"]["income"]
    assert income["method"] == "ks" and income["p_value"] < income["threshold"] == 0.05
    # subscribable like any other event
    subscription = SubscriptionCreate(
        url="https://ops.example/hooks", event_types=["drift.feature_detected"]
    )
    assert subscription.event_types == ["drift.feature_detected"]

    run_job(jobs.ctx, ALERTS_JOB, {})
    watched = api.get(f"/api/v1/alert-rules/{rules['feature_drift']}").json()
    assert watched["state"] == "firing" and watched["last_value"] == 1.0
    whole = api.get(f"/api/v1/alert-rules/{rules['dataset_drift']}").json()
    assert whole["state"] == "ok" and whole["last_value"] == 0.0
    run_job(jobs.ctx, TICK_JOB, {})
    evaluations = api.get(f"/api/v1/policies/{policy.json()['id']}/evaluations").json()["items"]
    [check] = [c for c in evaluations[-1]["checks"] if c["trigger"] == "drift"]
    assert check["fired"] and "income drifted" in check["reason"], check


def test_the_drift_check_interval_is_a_setting_that_reaches_beat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def interval() -> float:
        schedule = make_celery(Settings()).conf.beat_schedule["monitoring-drift-schedules"]
        assert schedule["task"] == "monitoring.tick_drift"
        return float(schedule["schedule"])

    monkeypatch.delenv("FLYWHEEL_DRIFT_CHECK_SECONDS", raising=False)
    assert interval() == 60.0
    monkeypatch.setenv("FLYWHEEL_DRIFT_CHECK_SECONDS", "7.5")
    assert interval() == 7.5
