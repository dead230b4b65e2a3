"""The loop closed, with every piece a real process: API, a Celery worker with beat, the
gateway and its replicas, on Postgres and Redis. A model serves; traffic shifts and its
labels flip; feedback arrives; the drift and performance triggers fire once; a retrain on
the window beats the champion on recent data, canaries, and becomes champion."""

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from app.core.migrate import upgrade
from tests.dbutil import scratch_postgres
from tests.e2e.services import (
    BIN,
    Process,
    admin_token,
    free_port,
    redis_url,
    require_redis,
    service_env,
    start_api,
    start_worker,
)
from tests.registry.helpers import Registry, churn_frame, fit_pipeline
from tests.training.conftest import plain, retrain_spec

pytestmark = pytest.mark.slow
DEPLOYMENT = "/api/v1/deployments/churn"


def wait(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def services(
    database_url: str, requires_postgres: None, tmp_path: Path
) -> Iterator[tuple[httpx.Client, str]]:
    broker = redis_url(9)
    require_redis(broker)
    with scratch_postgres(database_url, prefix="flywheel_loop") as url:
        upgrade(url)
        token = admin_token(url)
        env = service_env(url, broker, tmp_path / "home") | {
            "FLYWHEEL_POLICY_CHECK_SECONDS": "1",
            "FLYWHEEL_ROLLOUT_CHECK_SECONDS": "1",
        }
        api, base = start_api(env, tmp_path)
        worker = start_worker(
            env, tmp_path, "loop", "-c", "2", "-B", "-s", str(tmp_path / "beat-schedule")
        )
        port = free_port()
        gateway = Process(
            [str(BIN / "flywheel"), "gateway", "--port", str(port)], env, tmp_path / "gateway.log"
        )
        try:
            with httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ) as client:
                yield client, f"http://127.0.0.1:{port}"
        finally:
            gateway.stop()
            worker.stop()
            api.stop()


def shifted(rows: int, seed: int) -> pd.DataFrame:
    """Older, richer customers whose behaviour is the opposite of what the model learned."""
    frame = churn_frame(rows=rows, seed=seed)
    frame["age"] = frame["age"] + 25
    frame["income"] = frame["income"] + 40_000.0
    frame["churned"] = 1 - frame["churned"]
    return frame


def test_drift_and_decay_retrain_and_the_challenger_becomes_champion(
    services: tuple[httpx.Client, str], tmp_path: Path
) -> None:
    api, gateway = services
    original = churn_frame(rows=400, seed=7)
    registry = Registry(api, tmp_path)  # type: ignore[arg-type]  # same calls as TestClient
    dataset = registry.dataset_version(original)
    registry.register("churn", fit_pipeline(original), dataset["id"])
    wait(lambda: api.get("/api/v1/models/churn/versions/1").json()["status"] == "ready", "v1")
    assert api.put("/api/v1/models/churn/aliases/champion", json={"version": 1}).is_success
    created = api.post(
        "/api/v1/deployments",
        json={
            "name": "churn",
            "variants": [{"name": "v1", "model": "churn/1"}],
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            "rollout": {
                "strategy": "canary",
                "canary_percent": 50,
                "bake_seconds": 2,
                "guardrails": {
                    "min_requests": 20,
                    "max_p99_latency_ratio": 20,
                    "p99_slack_ms": 1000,
                },
            },
        },
    )
    assert created.status_code == 201, created.text
    assert api.post(
        "/api/v1/pipelines", json={"name": "retrain", "spec": retrain_spec()}
    ).is_success
    policy = api.post(
        "/api/v1/policies",
        json={
            "name": "loop",
            "deployment": "churn",
            "pipeline": "retrain",
            "triggers": {
                "performance": {"metric": "accuracy", "below": 0.6, "min_samples": 100},
                "drift": {},
            },
            "window": {"kind": "last_n", "n": 300},
            "cooldown": "1h",
        },
    )
    assert policy.status_code == 201, policy.text
    policy_id = policy.json()["id"]

    def predict(frame: pd.DataFrame) -> list[str]:
        ids = []
        with httpx.Client(base_url=gateway, headers=api.headers, timeout=60) as http:
            for row in plain(frame):
                reply = http.post("/serve/churn/predict", json={"rows": [row]})
                assert reply.status_code == 200, reply.text
                ids.append(reply.json()["request_id"])
        return ids

    def feedback(ids: list[str], frame: pd.DataFrame) -> None:
        items = [
            {"request_id": i, "label": int(y)} for i, y in zip(ids, frame["churned"], strict=True)
        ]
        wait(
            lambda: (
                api.post(f"{DEPLOYMENT}/feedback", json={"items": items}).json()["matched"]
                == len(items)
            ),
            "prediction logs to join the feedback",
        )

    def evaluations() -> list[dict[str, Any]]:
        reply = api.get(f"/api/v1/policies/{policy_id}/evaluations", params={"page_size": 1000})
        return list(reply.json()["items"])

    wait(lambda: _ready(gateway, api.headers), "the gateway to serve churn", timeout=90)
    calm = churn_frame(rows=200, seed=21)
    feedback(predict(calm), calm)
    time.sleep(2)  # a few beat ticks on good news: nothing fires
    assert [e["outcome"] for e in evaluations()] and all(
        e["outcome"] == "quiet" for e in evaluations()
    )

    moved = shifted(300, seed=22)
    feedback(predict(moved), moved)
    report = api.post(f"{DEPLOYMENT}/drift-reports", json={"window": "1h"}).json()
    wait(
        lambda: api.get(f"{DEPLOYMENT}/drift-reports/{report['id']}").json()["status"] == "ready",
        "the drift report",
    )
    wait(lambda: [e for e in evaluations() if e["outcome"] == "fired"], "a trigger to fire")
    wait(
        lambda: {t for e in evaluations() for t in e["fired_by"]} >= {"performance", "drift"},
        "both triggers to have fired",
    )

    def rolling_out() -> dict[str, Any] | None:
        [retrain] = [e for e in evaluations() if e["outcome"] == "fired"]
        assert retrain["retrain_status"] in ("running", "rolling_out", "promoted"), retrain
        return retrain if retrain["retrain_status"] != "running" else None

    retrain = wait(rolling_out, "the challenger to be registered and rolled out", timeout=180)
    # keep the shifted traffic coming while the canary bakes, until the rollout ends
    deadline = time.monotonic() + 120
    while retrain["retrain_status"] == "rolling_out":
        assert time.monotonic() < deadline, retrain
        predict(shifted(40, seed=int(time.monotonic())))
        [retrain] = [e for e in evaluations() if e["outcome"] == "fired"]

    assert retrain["retrain_status"] == "promoted", retrain["retrain_detail"].get("rollout_reason")
    detail = retrain["retrain_detail"]
    assert detail["verdict"] == "blessed" and detail["champion_version"] == 1
    assert detail["metrics"]["accuracy"] > detail["champion_metrics"]["accuracy"] + 0.3
    assert retrain["window"]["rows"] == 300
    challenger = api.get("/api/v1/models/churn/versions/champion").json()
    assert challenger["version"] == detail["challenger_version"] == 2
    assert challenger["dataset_version_id"] == retrain["dataset_version_id"]
    live = api.get(DEPLOYMENT).json()["variants"]
    assert [(v["model"], v["weight"]) for v in live] == [("churn/2", 100)]
    rollout = api.get(f"{DEPLOYMENT}/rollouts/{retrain['rollout_id']}").json()
    assert [d["action"] for d in rollout["decisions"]][-1] == "complete"
    lineage = api.get("/api/v1/models/churn/versions/2/lineage").json()
    kinds = {n["type"] for n in lineage["nodes"]}
    assert {"dataset_version", "run", "model_version"} <= kinds
    # once, not repeatedly: one retrain; each trigger fired in one evaluation
    everything = evaluations()
    assert len([e for e in everything if e["outcome"] == "fired"]) == 1
    for trigger in ("performance", "drift"):
        assert len([e for e in everything if trigger in e["fired_by"]]) == 1, trigger
    assert all(e["outcome"] == "quiet" for e in everything[-3:])


def _ready(gateway: str, headers: httpx.Headers) -> bool:
    row = plain(churn_frame(rows=1))[0]
    try:
        url = f"{gateway}/serve/churn/predict"
        reply = httpx.post(url, json={"rows": [row]}, headers=headers, timeout=30)
    except httpx.TransportError:
        return False
    return reply.status_code == 200
