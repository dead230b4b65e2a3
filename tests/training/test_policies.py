"""Retraining policies through the API: validation, triggers and their evaluations,
cooldown coalescing, windows kept as dataset versions, and the retrain's way to champion."""

from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import unit_of_work, utcnow
from app.monitoring.models import DriftReport
from app.training import triggers
from app.training.models import RetrainingPolicy
from tests.conftest import InlineJobs
from tests.registry.helpers import Registry
from tests.training.conftest import Labelled, evaluations, frame, retrain_spec, tick

URL = "/api/v1/policies"


def create(api: TestClient, **body: Any) -> dict[str, Any]:
    reply = api.post(
        URL, json={"name": "nightly", "deployment": "churn", "pipeline": "retrain", **body}
    )
    assert reply.status_code == 201, reply.text
    return dict(reply.json())


def refused(api: TestClient, **body: Any) -> str:
    payload = {"name": "bad", "deployment": "churn", "pipeline": "retrain", **body}
    reply = api.post(URL, json=payload)
    assert reply.status_code == 422, reply.text
    return str(reply.json()["error"]["message"] if "message" in reply.json() else reply.json())


def test_create_read_update_delete(served: TestClient) -> None:
    policy = create(
        served,
        triggers={"schedule": {"cron": "0 3 * * *"}, "drift": {"features": ["income"]}},
        window={"kind": "period", "period": "30d", "include_original": True},
        cooldown="6h",
    )
    assert policy["window"] == {"kind": "period", "seconds": 2_592_000.0, "include_original": True}
    assert policy["cooldown_seconds"] == 6 * 3600 and policy["next_schedule_at"] is not None
    assert served.get(f"{URL}/{policy['id']}").json()["name"] == "nightly"
    assert [p["name"] for p in served.get(URL, params={"deployment": "churn"}).json()["items"]] == [
        "nightly"
    ]
    changed = served.patch(f"{URL}/{policy['id']}", json={"enabled": False, "cooldown": "1d"})
    assert changed.status_code == 200 and changed.json()["cooldown_seconds"] == 86400
    assert (
        served.post(
            URL, json={"name": "nightly", "deployment": "churn", "pipeline": "retrain"}
        ).status_code
        == 409
    )
    assert served.delete(f"{URL}/{policy['id']}").status_code == 204
    assert served.get(f"{URL}/{policy['id']}").status_code == 404


def test_policies_that_could_never_retrain_are_refused_with_the_reason(
    served: TestClient,
) -> None:
    assert "n must be a positive integer" in refused(served, window={"kind": "last_n", "n": 0})
    assert "cron" in refused(served, triggers={"schedule": {"cron": "every day"}}).lower()
    assert "exactly one" in refused(
        served, triggers={"performance": {"metric": "accuracy", "below": 0.8, "above": 0.9}}
    )
    assert "'postcode'" in refused(served, triggers={"drift": {"features": ["postcode"]}})
    assert "does not exist" in refused(served, triggers={"new_data": {"data_source": "nope"}})
    # LogisticRegression can neither grow trees nor learn online
    message = refused(served, training={"mode": "warm_start", "add_estimators": 5})
    assert "RandomForestClassifier" in message and "LogisticRegression" in message
    message = refused(served, training={"mode": "online", "publish_every": "10m"})
    assert "partial_fit" in message and "SGDClassifier" in message
    assert "publish_every" in refused(served, training={"mode": "online"})
    forest = retrain_spec("sklearn.ensemble.RandomForestClassifier", n_estimators=10)
    served.post("/api/v1/pipelines", json={"name": "forest", "spec": forest})
    assert "add_estimators" in refused(served, pipeline="forest", training={"mode": "warm_start"})
    lonely = {"tasks": retrain_spec()["tasks"][:1]}
    served.post("/api/v1/pipelines", json={"name": "lonely", "spec": lonely})
    assert "evaluate, register" in refused(served, pipeline="lonely")
    other = retrain_spec()
    other["tasks"][2]["params"]["model"] = "fraud"
    served.post("/api/v1/pipelines", json={"name": "other", "spec": other})
    assert "'fraud'" in refused(served, pipeline="other")
    assert (
        served.post(
            URL, json={"name": "x", "deployment": "nope", "pipeline": "retrain"}
        ).status_code
        == 404
    )


def test_manual_trigger_retrains_on_the_window_and_the_challenger_becomes_champion(
    served: TestClient, labelled: Labelled, jobs: InlineJobs
) -> None:
    labelled(frame(300, seed=11), flip=True)  # the concept changed: v1 is now wrong
    policy = create(served, window={"kind": "last_n", "n": 200})
    fired = served.post(f"{URL}/{policy['id']}/trigger", json={})
    assert fired.status_code == 202, fired.text
    evaluation = fired.json()
    assert evaluation["outcome"] == "fired" and evaluation["fired_by"] == ["manual"]
    assert evaluation["retrain_status"] == "running" and evaluation["pipeline_run_id"]
    assert evaluation["window"]["rows"] == 200  # the last 200, kept as a dataset version
    kept = served.get("/api/v1/datasets/nightly-window/versions/1").json()
    assert kept["rows"] == 200 and kept["id"] == evaluation["dataset_version_id"]
    assert {c["name"] for c in kept["schema"]} == {"age", "income", "city", "churned"}
    # a second retrain is refused while this one runs; nothing is written for it
    again = served.post(f"{URL}/{policy['id']}/trigger", json={"force": True})
    assert again.status_code == 409 and "in progress" in again.json()["error"]["message"]
    jobs.run()  # the pipeline: train on the window, evaluate against v1, register
    run = served.get(f"/api/v1/pipeline-runs/{evaluation['pipeline_run_id']}").json()
    assert run["status"] == "succeeded", run
    tick(jobs)  # registered as challenger, then rolled out (all at once here)
    tick(jobs)
    [done] = [e for e in evaluations(served, policy["id"]) if e["outcome"] == "fired"]
    assert done["retrain_status"] == "promoted", done
    assert done["retrain_detail"]["verdict"] == "blessed"
    assert done["retrain_detail"]["champion_version"] == 1
    version = served.get("/api/v1/models/churn/versions/3").json()
    assert version["aliases"] == ["champion"] or "champion" in version["aliases"]
    assert version["dataset_version_id"] == evaluation["dataset_version_id"]
    live = served.get("/api/v1/deployments/churn").json()["variants"]
    assert [(v["model"], v["weight"]) for v in live if v["weight"]] == [("churn/3", 100)]
    # inside the cooldown now: refused, unless forced
    blocked = served.post(f"{URL}/{policy['id']}/trigger", json={})
    assert blocked.status_code == 409 and "cooldown" in blocked.json()["error"]["message"]
    forced = served.post(f"{URL}/{policy['id']}/trigger", json={"force": True})
    assert forced.status_code == 202, forced.text


def test_a_manual_trigger_without_labelled_rows_is_a_422_and_writes_nothing(
    served: TestClient,
) -> None:
    policy = create(served)
    reply = served.post(f"{URL}/{policy['id']}/trigger", json={})
    assert reply.status_code == 422 and "feedback" in reply.json()["error"]["message"]
    assert evaluations(served, policy["id"]) == []


@pytest.mark.parametrize(
    ("window", "rows"),
    [
        ({"kind": "last_n", "n": 120}, 120),
        ({"kind": "last_n", "n": 120, "include_original": True}, 320),  # + 200 original
        ({"kind": "period", "period": "1h"}, 300),
        ({"kind": "representative", "n": 90, "buckets": 3}, 90),
        ({"kind": "dynamic", "method": "page_hinkley", "min_rows": 50}, None),
    ],
)
def test_each_window_kind_is_kept_as_the_rows_it_selected(
    served: TestClient, labelled: Labelled, window: dict[str, Any], rows: int | None
) -> None:
    labelled(frame(150, seed=11))
    labelled(frame(150, seed=12), flip=True)  # the served model is wrong from here on
    policy = create(served, window=window)
    evaluation = served.post(f"{URL}/{policy['id']}/trigger", json={}).json()
    selected = evaluation["window"]
    kept = served.get("/api/v1/datasets/nightly-window/versions/1").json()
    assert kept["rows"] == selected["rows"]
    if rows is not None:
        assert selected["rows"] == rows
    else:  # dynamic: from the change in the error stream, i.e. about the flipped half
        assert 100 <= selected["rows"] <= 200, selected
        assert selected["dynamic"]["changes"] >= 1


def test_triggers_fire_once_and_coalesce_inside_the_cooldown(
    served: TestClient, labelled: Labelled, jobs: InlineJobs, session_factory: sessionmaker[Session]
) -> None:
    labelled(frame(200, seed=11), flip=True)  # accuracy on feedback near 0
    policy = create(
        served,
        triggers={
            "performance": {"metric": "accuracy", "below": 0.7, "min_samples": 100},
            "drift": {},
            "schedule": {"cron": "0 3 * * *"},
        },
        cooldown="1h",
    )
    tick(jobs)
    [first] = evaluations(served, policy["id"])
    assert first["outcome"] == "fired" and first["fired_by"] == ["performance"]
    checks = {c["trigger"]: c for c in first["checks"]}
    assert checks["performance"]["numbers"]["labelled"] == 200
    assert checks["performance"]["numbers"]["value"] < 0.1
    assert not checks["drift"]["fired"] and not checks["schedule"]["fired"]
    tick(jobs)  # same evidence: not fired again (rows since the retrain are too few)
    second = evaluations(served, policy["id"])[-1]
    assert second["outcome"] == "quiet" and "need 100" in second["reason"]
    # new evidence inside the cooldown: a drift report and the cron coming due
    with unit_of_work(session_factory) as session:
        stored = session.get(RetrainingPolicy, policy["id"])
        assert stored is not None
        session.add(
            DriftReport(
                deployment_id=stored.deployment_id,
                model_version_id=1,
                window_start=utcnow() - timedelta(hours=1),
                window_end=utcnow(),
                status="ready",
                dataset_drifted=True,
                drifted_share=2 / 3,
                result={"features": {"income": {"drifted": True}, "age": {"drifted": True}}},
            )
        )
        session.flush()
        due = stored.next_schedule_at
        assert due is not None
        triggers.tick(session, jobs.ctx.artifacts, stored, now=due + timedelta(seconds=1))
    third = evaluations(served, policy["id"])[-1]
    assert third["outcome"] == "coalesced", third
    assert set(third["fired_by"]) == {"drift", "schedule"}
    assert "in progress" in third["reason"] or "cooldown" in third["reason"]
    tick(jobs)  # the drift report was seen once: it does not fire again
    drift = {c["trigger"]: c for c in evaluations(served, policy["id"])[-1]["checks"]}["drift"]
    assert not drift["fired"] and "no drift report after" in drift["reason"]
    fired = [e for e in evaluations(served, policy["id"]) if e["outcome"] == "fired"]
    assert len(fired) == 1


def test_cron_trigger_fires_when_due_and_moves_to_the_next_time(
    served: TestClient, labelled: Labelled, jobs: InlineJobs, session_factory: sessionmaker[Session]
) -> None:
    labelled(frame(150, seed=11))
    policy = create(served, triggers={"schedule": {"cron": "*/5 * * * *"}}, cooldown="1m")
    tick(jobs)
    assert evaluations(served, policy["id"])[-1]["outcome"] == "quiet"
    with unit_of_work(session_factory) as session:
        stored = session.get(RetrainingPolicy, policy["id"])
        assert stored is not None and stored.next_schedule_at is not None
        due = stored.next_schedule_at
        triggers.tick(session, jobs.ctx.artifacts, stored, now=due + timedelta(seconds=1))
        assert stored.next_schedule_at == due + timedelta(minutes=5)
    last = evaluations(served, policy["id"])[-1]
    assert last["outcome"] == "fired" and last["fired_by"] == ["schedule"]
    assert last["pipeline_run_id"] is not None


def test_a_rejected_challenger_changes_nothing_in_production(
    served: TestClient, labelled: Labelled, jobs: InlineJobs
) -> None:
    """A retrain that misses the pipeline's bar (accuracy 0.99 on the window's holdout) is
    rejected; the reason is recorded, the deployment and aliases stay as they were."""
    spec = retrain_spec()
    spec["tasks"][1]["params"] = {"thresholds": {"min": {"accuracy": 0.99}}}
    served.patch("/api/v1/pipelines/retrain", json={"spec": spec})
    labelled(frame(200, seed=11))
    policy = create(served)
    served.post(f"{URL}/{policy['id']}/trigger", json={})
    jobs.run()
    tick(jobs)
    [done] = [e for e in evaluations(served, policy["id"]) if e["outcome"] == "fired"]
    assert done["retrain_status"] == "rejected", done
    assert any("accuracy" in r for r in done["retrain_detail"]["reasons"])
    assert served.get("/api/v1/models/churn/versions/champion").json()["version"] == 1
    live = served.get("/api/v1/deployments/churn").json()["variants"]
    assert [v["model"] for v in live] == ["churn/1"]


def test_new_data_trigger_retrains_on_the_latest_version_of_the_policys_dataset(
    served: TestClient, jobs: InlineJobs, tmp_path: Path
) -> None:
    registry = Registry(served, tmp_path)

    def landing(seed: int) -> None:
        rows = frame(400, seed=seed)
        rows["ts"] = pd.date_range("2026-11-01", periods=400, freq="h", tz="UTC").astype(str)
        registry.dataset_version(rows, name="landing")

    landing(31)
    source = served.post("/api/v1/sources/data", json={"name": "landing", "dataset": "landing"})
    assert source.status_code == 201, source.text
    policy = create(
        served,
        triggers={"new_data": {"data_source": "landing"}},
        data={"source": "dataset", "dataset": "landing", "time_column": "ts"},
        window={"kind": "last_n", "n": 300},
    )
    tick(jobs)  # the version that existed before the policy is not news
    assert evaluations(served, policy["id"])[-1]["outcome"] == "quiet"
    landing(32)
    tick(jobs)
    fired = evaluations(served, policy["id"])[-1]
    assert fired["outcome"] == "fired" and fired["fired_by"] == ["new_data"], fired
    assert fired["checks"][0]["numbers"]["dataset_version_id"] is not None
    assert fired["window"]["rows"] == 300
    assert fired["window"]["last_time"].startswith("2026-11-17T15:00")  # the newest row
    kept = served.get("/api/v1/datasets/nightly-window/versions/1").json()
    # the dataset's time column is kept with the rows; the train run leaves it out
    assert {c["name"] for c in kept["schema"]} == {"age", "income", "city", "churned", "ts"}
    tick(jobs)
    assert evaluations(served, policy["id"])[-1]["outcome"] != "fired"  # seen once


def test_a_dynamic_window_can_start_where_the_drift_reports_turned(
    served: TestClient, labelled: Labelled, session_factory: sessionmaker[Session]
) -> None:
    labelled(frame(150, seed=11))
    turned = utcnow()
    labelled(frame(120, seed=12), flip=True)
    policy = create(served, window={"kind": "dynamic", "method": "drift_report", "min_rows": 50})
    with unit_of_work(session_factory) as session:
        stored = session.get(RetrainingPolicy, policy["id"])
        assert stored is not None
        deployment_id = stored.deployment_id
        for drifted, start in (
            (False, turned - timedelta(hours=1)),
            (True, turned),
            (True, utcnow()),
        ):
            session.add(
                DriftReport(
                    deployment_id=deployment_id,
                    model_version_id=1,
                    window_start=start,
                    window_end=utcnow(),
                    status="ready",
                    dataset_drifted=drifted,
                    result={"features": {}},
                )
            )
    evaluation = served.post(f"{URL}/{policy['id']}/trigger", json={})
    assert evaluation.status_code == 202, evaluation.text
    window = evaluation.json()["window"]
    assert window["rows"] == 120 and window["clamped"] is None  # the first drifted report on
    refused = served.post(
        URL,
        json={
            "name": "bad",
            "deployment": "churn",
            "pipeline": "retrain",
            "window": {"kind": "dynamic", "method": "drift_report", "min_rows": 0},
        },
    )
    assert refused.status_code == 422 and "min_rows" in refused.json()["error"]["message"]


def test_a_bad_duration_in_a_policy_is_located_in_the_body(served: TestClient) -> None:
    bodies = [
        ({"cooldown": "soon"}, ["body", "cooldown"]),
        ({"window": {"kind": "period", "period": "a month"}}, ["body", "window", "period"]),
        (
            {"triggers": {"performance": {"metric": "accuracy", "below": 0.8, "window": "x"}}},
            ["body", "triggers", "performance", "window"],
        ),
    ]
    for body, loc in bodies:
        reply = served.post(
            URL, json={"name": "bad", "deployment": "churn", "pipeline": "retrain", **body}
        )
        assert reply.status_code == 422, reply.text
        assert reply.json()["error"]["details"]["loc"] == loc, reply.text
