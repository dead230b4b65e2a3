"""`POST /policies/{id}/backtest`: a drift- and performance-triggered policy against "never
retrain" on a stream whose concept flips half-way, replayed with the pipeline's estimator."""

from pathlib import Path

import pandas as pd
from fastapi.testclient import TestClient

from tests.registry.helpers import Registry, churn_frame
from tests.training.conftest import frame

URL = "/api/v1/policies"


def history(rows: int = 2_000) -> pd.DataFrame:
    """One row an hour; from half-way the customers who churned stay and the others leave."""
    data = churn_frame(rows=rows, seed=5)
    data["ts"] = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(range(rows), unit="h")
    flipped = data.index >= rows // 2
    data.loc[flipped, "churned"] = 1 - data.loc[flipped, "churned"]
    return data


def test_a_triggered_policy_beats_never_retraining_on_a_drifting_stream(
    served: TestClient, tmp_path: Path
) -> None:
    Registry(served, tmp_path).dataset_version(history(), name="history")
    policy = served.post(
        URL,
        json={
            "name": "decay",
            "deployment": "churn",
            "pipeline": "retrain",
            "triggers": {
                "performance": {
                    "metric": "accuracy",
                    "below": 0.7,
                    "min_samples": 100,
                    "window": "10d",
                }
            },
            "window": {"kind": "last_n", "n": 400},
            "cooldown": "1d",
        },
    ).json()
    reply = served.post(
        f"{URL}/{policy['id']}/backtest",
        json={
            "dataset": "history",
            "time_column": "ts",
            "initial": 500,
            "step": "2d",
            "alternatives": [
                {"name": "never", "triggers": {}},
                {"name": "weekly", "triggers": {"schedule": {"cron": "0 0 * * 1"}}},
            ],
        },
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["rows"] == 2_000 and body["policy"] == "decay"
    results = {r["name"]: r for r in body["results"]}
    assert set(results) == {"decay", "never", "weekly"}
    never, decay, weekly = results["never"], results["decay"], results["weekly"]
    assert never["retrain_count"] == 0 and never["metric"] == "accuracy"
    assert 1 <= decay["retrain_count"] <= 5, decay["retrains"]
    assert decay["overall"] > never["overall"] + 0.15, (decay["overall"], never["overall"])
    assert weekly["retrain_count"] >= 5  # a week is 168 rows here: it retrains on schedule
    assert all(r["triggers"] == ["performance"] for r in decay["retrains"])
    first_flip = pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(hours=1_000)
    assert pd.Timestamp(decay["retrains"][0]["at"]) >= first_flip  # not before the change
    assert len(decay["series"]) == len(never["series"]) > 10


def test_backtest_input_errors_are_422_naming_the_problem(
    served: TestClient, tmp_path: Path
) -> None:
    Registry(served, tmp_path).dataset_version(frame(50), name="timeless")
    policy = served.post(URL, json={"name": "p", "deployment": "churn", "pipeline": "retrain"})
    url = f"{URL}/{policy.json()['id']}/backtest"
    missing = served.post(
        url, json={"dataset": "timeless", "time_column": "ts", "initial": 10, "step": 10}
    )
    assert missing.status_code == 422 and "ts" in missing.json()["error"]["message"]
    unknown = served.post(
        url,
        json={
            "dataset": "timeless",
            "time_column": "age",
            "initial": 10,
            "step": 10,
            "alternatives": [{"name": "x", "triggers": {"sometimes": {}}}],
        },
    )
    assert unknown.status_code == 422 and "sometimes" in unknown.json()["error"]["message"]
    assert (
        served.post(
            url, json={"dataset": "nope", "time_column": "ts", "initial": 1, "step": 1}
        ).status_code
        == 404
    )
