"""Endpoint metrics from rollups, performance and fairness from logs joined with feedback."""

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import unit_of_work
from app.monitoring.models import Feedback
from tests.deployments import traffic

URL = "/api/v1/deployments/churn"


@pytest.fixture
def deployed(api: TestClient, versions: None) -> None:
    body = {
        "name": "churn",
        "variants": [
            {"name": "blue", "model": "churn/1", "weight": 50},
            {"name": "green", "model": "churn/2", "weight": 50},
        ],
    }
    assert api.post("/api/v1/deployments", json=body).status_code == 201


def label(api: TestClient, ids: list[str], labels: list[Any]) -> None:
    items = [{"request_id": i, "label": y} for i, y in zip(ids, labels, strict=True)]
    assert api.post(f"{URL}/feedback", json={"items": items}).status_code == 200


def test_endpoint_metrics_sum_rollups_and_merge_latency_histograms(
    api: TestClient, deployed: None, session_factory: sessionmaker[Session]
) -> None:
    traffic.record(session_factory, "churn", "blue", 30, latency_ms=8.0)
    traffic.record(session_factory, "churn", "blue", 10, latency_ms=8.0, errors=3)
    traffic.record(session_factory, "churn", "green", 7, latency_ms=40.0)
    answer = api.get(f"{URL}/metrics", params={"window": "2h", "step": "5m"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["step_seconds"] == 300 and "from" in body and "to" in body
    series = {s["variant"]: s["points"] for s in body["series"]}
    [blue] = series["blue"]
    assert blue["invocations"] == 40 and blue["errors_5xx"] == 3 and blue["errors_4xx"] == 0
    assert blue["error_rate"] == pytest.approx(3 / 40) and blue["rate_per_second"] == round(
        40 / 300, 4
    )
    assert 7.2 <= blue["total_ms"]["p50"] <= 8.9 and blue["total_ms"]["mean"] == pytest.approx(
        8.2, abs=0.1
    )
    assert blue["model_ms"]["mean"] == pytest.approx(4.0)  # replicas measured half the total
    assert 3.6 <= blue["overhead_ms"]["p50"] <= 4.9
    [green] = series["green"]
    assert green["invocations"] == 7 and 36 <= green["total_ms"]["p99"] <= 45
    only = api.get(f"{URL}/metrics", params={"variant": "green"}).json()
    assert [s["variant"] for s in only["series"]] == ["green"]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"step": "90s"}, "multiple of 60s"),
        ({"window": "soon"}, "not a duration"),
        ({"window": "30d", "step": "1m"}, "too many"),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "before"),
    ],
)
def test_metrics_queries_that_cannot_be_answered_say_why(
    api: TestClient, deployed: None, params: dict[str, str], fragment: str
) -> None:
    answer = api.get(f"{URL}/metrics", params=params)
    assert answer.status_code == 422 and fragment in answer.json()["error"]["message"]
    assert api.get("/api/v1/deployments/nope/metrics").status_code == 404


def test_performance_per_variant_counts_only_labelled_predictions(
    api: TestClient, deployed: None, session_factory: sessionmaker[Session]
) -> None:
    blue = traffic.record(
        session_factory, "churn", "blue", 100, predictions=[1], probabilities=[[0.3, 0.7]]
    )
    label(api, blue[:80], [1] * 60 + [0] * 20)  # 20 unlabelled, 60 of 80 right
    green = traffic.record(session_factory, "churn", "green", 50, predictions=[0, 1])
    label(api, green, [0, 1] * 25)
    body = api.get(f"{URL}/performance", params={"window": "1d", "step": "1d"}).json()
    assert body["kind"] == "classification"
    points = {p["variant"]: p for p in body["points"]}
    assert points["blue"]["labelled"] == 80 and points["green"]["labelled"] == 50
    assert points["blue"]["metrics"]["accuracy"] == 0.75
    assert (
        points["blue"]["metrics"]["precision"] == 0.75 and points["blue"]["metrics"]["recall"] == 1
    )
    assert points["blue"]["metrics"]["roc_auc"] == 0.5  # one score for every row
    assert points["green"]["metrics"]["accuracy"] == 1 and points["green"]["metrics"]["f1"] == 1


def test_fairness_by_a_logged_input_column(
    api: TestClient, deployed: None, session_factory: sessionmaker[Session]
) -> None:
    paris = traffic.record(
        session_factory, "churn", "blue", 40, rows=[{"city": "Paris"}], predictions=[1, 1, 0, 0]
    )
    nice = traffic.record(
        session_factory, "churn", "blue", 40, rows=[{"city": "Nice"}], predictions=[1, 0, 0, 0]
    )
    traffic.record(session_factory, "churn", "blue", 5, rows=[{"city": "Lyon"}])
    label(api, paris + nice, [1, 0] * 40)
    answer = api.get(f"{URL}/fairness", params={"attribute": "city"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    groups = {g["group"]: g for g in body["groups"]}
    assert groups["Paris"]["selection_rate"] == 0.5 and groups["Nice"]["selection_rate"] == 0.25
    assert groups["Lyon"]["count"] == 5 and body["judged_groups"] == ["Nice", "Paris"]
    assert body["positive"] == 1 and body["demographic_parity_ratio"] == 0.5
    assert body["four_fifths_rule_passed"] is False and body["verdict"] == "failed"
    assert groups["Paris"]["tpr"] == 0.5 and groups["Paris"]["fpr"] == 0.5
    missing = api.get(f"{URL}/fairness", params={"attribute": "gender"})
    assert missing.status_code == 422 and "city" in missing.json()["error"]["message"]


def test_feedback_labels_must_be_the_models_classes_and_all_bad_ones_are_named(
    api: TestClient, deployed: None, session_factory: sessionmaker[Session]
) -> None:
    ids = traffic.record(session_factory, "churn", "blue", 4, predictions=[1])
    one = api.post(f"{URL}/feedback", json={"request_id": ids[0], "label": 7})
    assert one.status_code == 422, one.text
    assert one.json()["error"]["details"][0]["loc"] == ["body", "label"]
    assert "7 is not one of the model's classes [0, 1]" in one.json()["error"]["message"]
    items = [
        {"request_id": ids[0], "label": 1},
        {"request_id": ids[1], "label": "yes"},
        {"request_id": ids[2], "labels": [0]},
        {"request_id": ids[3], "label": 1.5},
        {"request_id": "later", "labels": [1, True]},
    ]
    batch = api.post(f"{URL}/feedback", json={"items": items})
    assert batch.status_code == 422, batch.text
    details = batch.json()["error"]["details"]
    assert [d["loc"] for d in details] == [
        ["body", "items", 1, "label"],
        ["body", "items", 3, "label"],
        ["body", "items", 4, "labels", 1],
    ]
    assert details[0]["field"] == "body.items[1].label"
    assert all("[0, 1]" in d["message"] for d in details)
    body = api.get(f"{URL}/performance", params={"window": "1d", "step": "1d"}).json()
    assert body["points"] == []  # nothing of the refused batch was written


def test_feedback_labels_are_stored_as_the_model_names_its_classes(
    api: TestClient, deployed: None, session_factory: sessionmaker[Session]
) -> None:
    ids = traffic.record(session_factory, "churn", "blue", 4, predictions=[1])
    label(api, ids, [1.0, "1", 1, 0])  # 1.0 and "1" are class 1
    body = api.get(f"{URL}/performance", params={"window": "1d", "step": "1d"}).json()
    [point] = body["points"]
    assert point["labelled"] == 4 and point["metrics"]["accuracy"] == 0.75


def test_performance_leaves_out_stored_labels_the_model_cannot_predict(
    api: TestClient, deployed: None, session_factory: sessionmaker[Session]
) -> None:
    """Rows written before labels were checked: reported as ignored, never a 500."""
    good = traffic.record(session_factory, "churn", "blue", 4, predictions=[1])
    label(api, good, [1, 1, 1, 0])
    bad = traffic.record(session_factory, "churn", "blue", 3, predictions=[1])
    with unit_of_work(session_factory) as session:
        for request_id, stored in zip(bad, [[7], ["yes"], [1.5]], strict=True):
            session.add(Feedback(deployment="churn", request_id=request_id, labels=stored))
    answer = api.get(f"{URL}/performance", params={"window": "1d", "step": "1d"})
    assert answer.status_code == 200, answer.text
    [point] = answer.json()["points"]
    assert answer.json()["ignored"] == 3
    assert point["labelled"] == 4 and point["metrics"]["accuracy"] == 0.75


def test_a_bad_duration_is_located_where_it_was_sent(api: TestClient, deployed: None) -> None:
    rule = {"name": "x", "deployment": "churn", "metric": "error_rate", "operator": ">"}
    created = api.post("/api/v1/alert-rules", json=rule | {"threshold": 0.1}).json()
    sent = [
        api.post("/api/v1/alert-rules", json=rule | {"threshold": 0.1, "window": "forever"}),
        api.patch(f"/api/v1/alert-rules/{created['id']}", json={"window": "soon"}),
        api.post(f"{URL}/drift-reports", json={"window": "a while"}),
        api.put(f"{URL}/drift-schedule", json={"cron": "0 * * * *", "window": "daily"}),
    ]
    for answer in sent:
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["details"]["loc"] == ["body", "window"], answer.text
    query = api.get(f"{URL}/performance", params={"window": "soon"})
    assert query.json()["error"]["details"]["loc"] == ["query", "window"]
