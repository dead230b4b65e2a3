"""Drift reports on logged traffic against the reference profile stored with the data set."""

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import unit_of_work, utcnow
from app.core.jobs import run_job
from app.events.models import Event
from app.monitoring import drift_reports
from app.monitoring.jobs import ALERTS_JOB
from app.monitoring.models import DriftReport
from tests.conftest import InlineJobs
from tests.deployments import traffic
from tests.registry.helpers import FEATURES, churn_frame

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


def report(api: TestClient, jobs: InlineJobs, **body: Any) -> dict[str, Any]:
    created = api.post(f"{URL}/drift-reports", json={"window": "1h"} | body)
    assert created.status_code == 202, created.text
    assert created.json()["status"] == "pending"
    jobs.run()
    done = api.get(f"{URL}/drift-reports/{created.json()['id']}").json()
    assert done["status"] == "ready", done
    return dict(done)


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
