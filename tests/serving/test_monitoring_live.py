"""Monitoring end to end: real traffic through the gateway, feedback, then metrics,
performance, fairness (a biased and an unbiased model), drift (shifted and unshifted
features), an alert that fires and resolves, and its webhooks at a receiving server."""

import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.core.db import unit_of_work, utcnow
from app.core.jobs import run_job
from app.monitoring import alerts
from app.monitoring.jobs import ALERTS_JOB
from app.monitoring.models import AlertRule, PredictionLog
from tests.live import live_server
from tests.registry.helpers import FEATURES, churn_frame, fit_pipeline
from tests.serving.conftest import wait_for
from tests.subscriptions.receiver import Receiver

pytestmark = pytest.mark.slow
URL = "/api/v1/deployments/watch"


def plain(frame: Any) -> list[dict[str, Any]]:
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in frame.to_dict("records")
    ]


def test_traffic_feedback_metrics_quality_fairness_drift_alerts_and_webhooks(
    stack: dict[str, Any],
) -> None:
    api, base, jobs, factory = stack["api"], stack["base"], stack["jobs"], stack["factory"]
    frame, registry, dataset = stack["frame"], stack["registry"], stack["dataset"]
    # biased: it learned "Paris churns"; fair: it learned "all but the youngest", whatever
    # the city (a clear-cut rule, so a few hundred requests judge it without luck)
    registry.register(
        "churn",
        fit_pipeline(frame.assign(churned=(frame.city == "Paris").astype(int))),
        dataset["id"],
    )
    registry.register(
        "churn", fit_pipeline(frame.assign(churned=(frame.age > 22).astype(int))), dataset["id"]
    )
    jobs.run()
    created = api.post(
        "/api/v1/deployments",
        json={
            "name": "watch",
            "unit_key": "x-user-id",
            "variants": [
                {"name": "biased", "model": "churn/4", "weight": 50},
                {"name": "fair", "model": "churn/5", "weight": 50},
            ],
        },
    )
    assert created.status_code == 201, created.text
    gateway = stack["app"].state.gateway
    wait_for(
        lambda: (
            "watch" in gateway.served
            and all(r.ready for lane in gateway.served["watch"].lanes for r in lane.replicas)
            and all(lane.replicas for lane in gateway.served["watch"].lanes)
        ),
        message="watch did not start",
    )
    target = Receiver()
    with live_server(target.app) as receiver_base:
        target.answers = [(500, {})]  # the first delivery fails once
        subscription = api.post(
            "/api/v1/subscriptions",
            json={"url": f"{receiver_base}/hook", "event_types": ["alert.*"]},
        ).json()

        traffic = churn_frame(rows=400, seed=21)
        shifted = churn_frame(rows=300, seed=22)
        shifted["income"] = shifted["income"] + 40_000.0
        answers = []
        with httpx.Client(base_url=base, headers=stack["auth"], timeout=60) as http:
            for index, row in enumerate(plain(traffic[FEATURES])):
                reply = http.post(
                    "/serve/watch/predict",
                    json={"rows": [row]},
                    headers={"x-user-id": f"user-{index}"},
                )
                assert reply.status_code == 200, reply.text
                answers.append(reply.json())

        def logged() -> int:
            with factory() as session:
                count = select(func.count()).select_from(PredictionLog)
                return int(session.scalar(count.where(PredictionLog.deployment == "watch")) or 0)

        wait_for(lambda: logged() >= 400, message="prediction logs were not written")
        items = [
            {"request_id": a["request_id"], "label": int(label)}
            for a, label in zip(answers, traffic["churned"], strict=True)
        ]
        assert api.post(f"{URL}/feedback", json={"items": items}).json()["matched"] == 400

        metrics = api.get(f"{URL}/metrics", params={"window": "1h", "step": "1h"}).json()
        calls = {
            s["variant"]: sum(p["invocations"] for p in s["points"]) for s in metrics["series"]
        }
        assert sum(calls.values()) == 400 and set(calls) == {"biased", "fair"}
        busy = [p for s in metrics["series"] for p in s["points"] if p["invocations"]]
        assert all(p["model_ms"]["p50"] > 0 and p["overhead_ms"]["p50"] > 0 for p in busy)
        assert all(p["replicas_max"] >= 1 for s in metrics["series"] for p in s["points"])

        quality = api.get(f"{URL}/performance", params={"window": "1h", "step": "1h"}).json()
        labelled = {p["variant"]: p["labelled"] for p in quality["points"]}
        assert labelled == calls
        assert all(p["metrics"]["accuracy"] is not None for p in quality["points"])

        def fairness(variant: str) -> dict[str, Any]:
            params = {"attribute": "city", "window": "1h", "variant": variant}
            return dict(api.get(f"{URL}/fairness", params=params).json())

        assert fairness("biased")["verdict"] == "failed"
        assert fairness("biased")["demographic_parity_ratio"] < 0.2
        assert fairness("fair")["verdict"] == "passed"

        def drift_report() -> dict[str, Any]:
            made = api.post(f"{URL}/drift-reports", json={"window": "1h", "variant": "fair"})
            assert made.status_code == 202, made.text
            jobs.run()
            return dict(api.get(f"{URL}/drift-reports/{made.json()['id']}").json())

        calm = drift_report()
        assert calm["status"] == "ready" and calm["dataset_drifted"] is False

        rule = api.post(
            "/api/v1/alert-rules",
            json={
                "name": "inputs moved",
                "deployment": "watch",
                "metric": "dataset_drift",
                "operator": ">=",
                "threshold": 1,
                "window": "1h",
            },
        ).json()
        run_job(jobs.ctx, ALERTS_JOB, {})
        assert api.get(f"/api/v1/alert-rules/{rule['id']}").json()["state"] == "ok"

        with httpx.Client(base_url=base, headers=stack["auth"], timeout=60) as http:
            for index, row in enumerate(plain(shifted[FEATURES])):
                http.post(
                    "/serve/watch/predict", json={"rows": [row]}, headers={"x-user-id": f"s{index}"}
                )
        wait_for(lambda: logged() >= 700, message="prediction logs were not written")
        moved = drift_report()
        features = moved["result"]["features"]
        assert features["income"]["drifted"] and not features["city"]["drifted"]
        assert features["income"]["method"] == "ks" and moved["dataset_drifted"] is False
        # income alone is a third of the features: not dataset drift at share 0.5, so the
        # dataset rule stays quiet; a rule on the feature itself fires
        watch = api.post(
            "/api/v1/alert-rules",
            json={
                "name": "income moved",
                "deployment": "watch",
                "metric": "feature_drift",
                "operator": ">=",
                "threshold": 1,
                "window": "1h",
                "params": {"feature": "income"},
            },
        ).json()
        run_job(jobs.ctx, ALERTS_JOB, {})
        run_job(jobs.ctx, ALERTS_JOB, {})  # still drifted: no second alert
        firing = api.get("/api/v1/alerts", params={"state": "firing"}).json()["items"]
        assert len(firing) == 1 and "feature_drift" in firing[0]["message"]
        assert api.get(f"/api/v1/alert-rules/{rule['id']}").json()["state"] == "ok"
        with unit_of_work(factory) as session:
            stored = session.get(AlertRule, watch["id"])
            assert stored is not None
            alerts.evaluate(session, stored, now=utcnow() + timedelta(hours=2))  # report aged out
        assert api.get("/api/v1/alerts", params={"state": "resolved"}).json()["items"]

        jobs.run()  # deliveries, with the retry after the 500
        deadline = time.monotonic() + 180
        while len(target.received) < 3 and time.monotonic() < deadline:
            jobs.run()
            time.sleep(0.1)
    statuses = list(target.received)
    assert len(statuses) == 3, [r["headers"].get("webhook-id") for r in statuses]
    assert all(Receiver.verified(r, subscription["secret"]) for r in target.received)
    first = target.received[0]  # answered 500: the alert.fired delivery, tried again later
    assert b'"alert.fired"' in first["body"]
    by_id: dict[str, list[bytes]] = {}
    for got in target.received:
        by_id.setdefault(got["headers"]["webhook-id"], []).append(got["body"])
    assert len(by_id[first["headers"]["webhook-id"]]) == 2  # the retry, same webhook-id
    [resolved] = [bodies for key, bodies in by_id.items() if key != first["headers"]["webhook-id"]]
    assert len(resolved) == 1 and b'"alert.resolved"' in resolved[0]  # nothing twice
