import time

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.tracking.models import Metric
from tests.tracking.test_experiments_and_runs import make_experiment, make_run


def run_id(api: TestClient) -> int:
    return make_run(api, make_experiment(api)["id"])["id"]


def test_batch_of_ten_thousand_points(api: TestClient, session: Session) -> None:
    rid = run_id(api)
    points = [{"key": f"m{i % 10}", "value": i / 7, "step": i // 10} for i in range(10_000)]
    response = api.post(f"/api/v1/runs/{rid}/metrics", json={"metrics": points})
    assert response.status_code == 200, response.text
    assert response.json() == {"written": 10_000}
    count = session.scalar(select(func.count()).select_from(Metric).where(Metric.run_id == rid))
    assert count == 10_000
    run = api.get(f"/api/v1/runs/{rid}").json()
    assert run["metrics"]["m9"] == 9999 / 7  # the highest step wins


def test_too_many_points_is_refused_whole(api: TestClient, session: Session) -> None:
    rid = run_id(api)
    points = [{"key": "m", "value": 1.0, "step": i} for i in range(10_001)]
    response = api.post(f"/api/v1/runs/{rid}/metrics", json={"metrics": points})
    assert response.status_code == 422
    assert "10000" in response.json()["error"]["message"]
    assert session.scalar(select(func.count()).select_from(Metric).where(Metric.run_id == rid)) == 0


def test_bad_item_is_named_and_nothing_is_written(api: TestClient, session: Session) -> None:
    rid = run_id(api)
    points = [{"key": "loss", "value": 0.5, "step": i} for i in range(600)]
    points[523] = {"key": "loss", "value": "NaN", "step": 523}
    response = api.post(f"/api/v1/runs/{rid}/metrics", json={"metrics": points})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["details"][0]["field"] == "body.metrics[523].value"
    assert "metrics[523].value" in error["message"]
    assert session.scalar(select(func.count()).select_from(Metric).where(Metric.run_id == rid)) == 0


def test_history_and_latest_value_ordering(api: TestClient) -> None:
    rid = run_id(api)
    now = int(time.time() * 1000)
    first = [
        {"key": "acc", "value": 0.5, "step": 2, "timestamp": now},
        {"key": "acc", "value": 0.9, "step": 1, "timestamp": now + 5},
    ]
    api.post(f"/api/v1/runs/{rid}/metrics", json={"metrics": first})
    assert api.get(f"/api/v1/runs/{rid}").json()["metrics"]["acc"] == 0.5
    # a later batch with an older step does not move the latest value back
    api.post(
        f"/api/v1/runs/{rid}/metrics", json={"metrics": [{"key": "acc", "value": 0.1, "step": 0}]}
    )
    assert api.get(f"/api/v1/runs/{rid}").json()["metrics"]["acc"] == 0.5
    api.post(
        f"/api/v1/runs/{rid}/metrics", json={"metrics": [{"key": "acc", "value": 0.7, "step": 3}]}
    )
    assert api.get(f"/api/v1/runs/{rid}").json()["metrics"]["acc"] == 0.7

    history = api.get(f"/api/v1/runs/{rid}/metrics/acc").json()
    assert history["key"] == "acc"
    assert [(p["step"], p["value"]) for p in history["items"]] == [
        (2, 0.5),
        (1, 0.9),
        (0, 0.1),
        (3, 0.7),
    ]
    paged = api.get(f"/api/v1/runs/{rid}/metrics/acc?page_size=3").json()
    assert len(paged["items"]) == 3 and paged["next_page_token"]
    assert api.get(f"/api/v1/runs/{rid}/metrics/nope").status_code == 404


def test_metrics_for_a_missing_run_is_404(api: TestClient) -> None:
    response = api.post("/api/v1/runs/999999/metrics", json={"metrics": [{"key": "a", "value": 1}]})
    assert response.status_code == 404
