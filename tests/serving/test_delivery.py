"""Delivery against live processes: telemetry through the API, rollouts the gateway follows,
a canary that raises rolled back by itself, and a replica killed under load."""

import os
import signal
import threading
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.core.jobs import run_job
from app.deployments.jobs import ADVANCE_JOB
from app.monitoring.models import PredictionLog, ServingRollup
from tests.deployments.decisions import assert_walked
from tests.serving.conftest import rows, wait_for

pytestmark = pytest.mark.slow


def create(stack: dict[str, Any], name: str, **extra: Any) -> None:
    body = {"name": name, "variants": [{"name": "blue", "model": "churn/1"}]} | extra
    created = stack["api"].post("/api/v1/deployments", json=body)
    assert created.status_code == 201, created.text
    gateway = stack["app"].state.gateway
    wait_for(
        lambda: (
            name in gateway.served
            and all(r.ready for lane in gateway.served[name].lanes for r in lane.replicas)
        ),
        message=f"{name} did not start",
    )


def test_telemetry_reaches_prometheus_rollups_logs_replicas_and_ab_feedback(
    stack: dict[str, Any],
) -> None:
    base, api, frame = stack["base"], stack["api"], stack["frame"]
    with httpx.Client(base_url=base, headers=stack["auth"], timeout=30) as http:
        answers = [
            http.post(
                "/serve/churn/predict",
                json={"rows": rows(frame, 1)},
                headers={"x-user-id": f"u{i}"},
            )
            for i in range(60)
        ]
        assert http.post("/serve/churn/predict", json={"rows": [{"age": "x"}]}).status_code == 422
        metrics = http.get("/metrics").text
    assert all(a.status_code == 200 for a in answers)
    by_variant = {v: sum(a.json()["variant"] == v for a in answers) for v in ("blue", "green")}
    labels = 'code="2xx",deployment="churn",shadow="false",variant="blue"'
    line = f"flywheel_gateway_requests_total{{{labels}}} {float(by_variant['blue'])}"
    assert line in metrics
    assert "flywheel_gateway_overhead_seconds_bucket" in metrics
    assert (
        'flywheel_gateway_replicas{deployment="churn",state="ready",variant="blue"} 1.0' in metrics
    )

    factory = stack["factory"]

    def logged() -> int:
        with factory() as session:
            return int(session.scalar(select(func.count()).select_from(PredictionLog)) or 0)

    wait_for(lambda: logged() >= 61, message="prediction logs were not written")
    with factory() as session:
        rollups = session.execute(
            select(
                ServingRollup.variant,
                func.sum(ServingRollup.invocations),
                func.sum(ServingRollup.errors_4xx),
                func.sum(ServingRollup.model_ms_sum),
            )
            .where(ServingRollup.deployment == "churn")
            .group_by(ServingRollup.variant)
        ).all()
    totals = {variant: (calls, bad, model_ms) for variant, calls, bad, model_ms in rollups}
    assert sum(calls for calls, _, _ in totals.values()) == 61
    assert sum(bad for _, bad, _ in totals.values()) == 1
    assert all(model_ms > 0 for _, _, model_ms in totals.values())

    replicas = api.get("/api/v1/deployments/churn/replicas").json()["items"]
    served = stack["app"].state.gateway.served["churn"]
    pids = {r.pid for lane in served.lanes for r in lane.replicas}
    assert {r["pid"] for r in replicas} == pids and len(replicas) == 2
    assert all(r["state"] == "ready" and r["cold_start_seconds"] > 0 for r in replicas)

    experiment = api.post(
        "/api/v1/deployments/churn/experiments",
        json={"name": "colour", "control": "blue", "treatment": "green", "min_samples": 5},
    ).json()
    with httpx.Client(base_url=base, headers=stack["auth"], timeout=30) as http:
        fresh = [
            http.post(
                "/serve/churn/predict",
                json={"rows": rows(frame, 1)},
                headers={"x-user-id": f"w{i}"},
            ).json()
            for i in range(40)
        ]
    wait_for(lambda: logged() >= 101, message="prediction logs were not written")
    feedback = [{"request_id": a["request_id"], "label": a["predictions"][0]} for a in fresh]
    accepted = api.post("/api/v1/deployments/churn/feedback", json={"items": feedback}).json()
    assert accepted == {"accepted": 40, "matched": 40}
    result = api.get(f"/api/v1/deployments/churn/experiments/{experiment['id']}").json()
    samples = {arm["variant"]: arm["samples"] for arm in result["arms"]}
    assert samples == {v: sum(a["variant"] == v for a in fresh) for v in ("blue", "green")}
    assert all(arm["mean"] in (None, 1.0) for arm in result["arms"])


def test_a_canary_that_raises_is_rolled_back_by_itself(stack: dict[str, Any]) -> None:
    base, api, frame = stack["base"], stack["api"], stack["frame"]
    create(
        stack,
        "risky",
        rollout={
            "strategy": "canary",
            "canary_percent": 50,
            "bake_seconds": 600,
            "guardrails": {"min_requests": 10, "max_error_rate": 0.05},
        },
    )
    promoted = api.post("/api/v1/deployments/risky/promote", json={"model": "churn/3"})
    assert promoted.status_code == 201, promoted.text
    gateway = stack["app"].state.gateway
    wait_for(
        lambda: (
            len(gateway.served["risky"].lanes) == 2
            and all(r.ready for lane in gateway.served["risky"].lanes for r in lane.replicas)
            and all(lane.replicas for lane in gateway.served["risky"].lanes)
        ),
        message="the canary did not start",
    )
    blue_pid = gateway.served["risky"].lanes[0].replicas[0].pid
    sample = rows(frame, 10)
    for row in sample[::3]:
        row["city"] = "Marseille"  # the canary's model cannot handle a city it never saw
    statuses = []
    with httpx.Client(base_url=base, headers=stack["auth"], timeout=30) as http:
        for _ in range(8):
            for row in sample:
                statuses.append(http.post("/serve/risky/predict", json={"rows": [row]}).status_code)
    assert 500 in statuses and 200 in statuses
    factory = stack["factory"]

    def state() -> str:
        run_job(stack["jobs"].ctx, ADVANCE_JOB, {})
        return str(api.get("/api/v1/deployments/risky/rollouts").json()["items"][0]["state"])

    wait_for(lambda: state() == "rolled_back", message="no automatic rollback")
    rollout = api.get("/api/v1/deployments/risky/rollouts").json()["items"][0]
    assert "error rate" in rollout["reason"]
    assert rollout["decisions"][-1]["numbers"]["candidate"]["errors"] > 0
    wait_for(lambda: [lane.name for lane in gateway.served["risky"].lanes] == ["blue"])
    # the baseline kept its warm replica through the canary and the rollback
    assert gateway.served["risky"].lanes[0].replicas[0].pid == blue_pid
    with httpx.Client(base_url=base, headers=stack["auth"], timeout=30) as http:
        after = [
            http.post("/serve/risky/predict", json={"rows": [row]}).status_code for row in sample
        ]
    assert after == [200] * len(sample)
    del factory


def test_a_healthy_production_canary_walks_its_steps_with_mirrored_comparison(
    stack: dict[str, Any],
) -> None:
    base, api, frame = stack["base"], stack["api"], stack["frame"]
    create(
        stack,
        "steady",
        environment="production",  # the admin token carries the deployer role it needs
        rollout={
            "strategy": "linear",
            "linear_steps": [20, 60],
            "bake_seconds": 0,
            "guardrails": {"min_requests": 5, "max_disagreement": 0.5},
        },
    )
    promoted = api.post("/api/v1/deployments/steady/promote", json={"model": "churn/2"}).json()
    gateway = stack["app"].state.gateway

    def candidate_ready() -> bool:
        lanes = {lane.name: lane for lane in gateway.served["steady"].lanes}
        return "v2" in lanes and any(r.ready for r in lanes["v2"].replicas)

    wait_for(candidate_ready, message="candidate did not start")
    v2_pid = (
        next(lane for lane in gateway.served["steady"].lanes if lane.name == "v2").replicas[0].pid
    )
    deadline = time.monotonic() + 300  # generous: each check needs flushed telemetry
    with httpx.Client(base_url=base, headers=stack["auth"], timeout=30) as http:
        while True:
            for _ in range(40):
                http.post("/serve/steady/predict", json={"rows": rows(frame, 1)})
            time.sleep(1.2)  # let the telemetry flush land before the check (not asserted)
            run_job(stack["jobs"].ctx, ADVANCE_JOB, {})
            rollout = api.get(f"/api/v1/deployments/steady/rollouts/{promoted['id']}").json()
            if rollout["state"] != "running" or time.monotonic() > deadline:
                break
    assert rollout["state"] == "completed", rollout
    assert_walked(rollout["decisions"], [20, 60, 100])
    advanced = next(d for d in rollout["decisions"] if d["action"] == "advance")
    assert advanced["numbers"]["disagreement"]["pairs"] >= 5
    wait_for(lambda: [lane.name for lane in gateway.served["steady"].lanes] == ["v2"])
    lane = gateway.served["steady"].lanes[0]
    assert lane.replicas[0].pid == v2_pid  # weights moved; the replica was never restarted
    assert lane.weight == 100 and lane.mirror is False


def test_load_with_a_replica_killed_midway(stack: dict[str, Any]) -> None:
    base, frame = stack["base"], stack["frame"]
    create(stack, "busy", autoscaling={"min_replicas": 2, "max_replicas": 2})
    gateway = stack["app"].state.gateway
    wait_for(lambda: len(gateway.served["busy"].lanes[0].replicas) == 2)
    lane = gateway.served["busy"].lanes[0]
    wait_for(lambda: all(r.ready for r in lane.replicas))
    victim = lane.replicas[0].pid
    assert victim is not None
    statuses: list[int] = []
    body = {"rows": rows(frame, 1)}
    total, threads = 2400, 8
    sent = threading.Semaphore(0)

    def client() -> None:
        with httpx.Client(base_url=base, headers=stack["auth"], timeout=60) as http:
            for _ in range(total // threads):
                statuses.append(http.post("/serve/busy/predict", json=body).status_code)
                sent.release()

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for _ in range(total // 3):
        sent.acquire()
    os.kill(victim, signal.SIGKILL)
    for worker in workers:
        worker.join()
    failures = sum(s != 200 for s in statuses)
    assert len(statuses) == total
    assert failures / total < 0.001, (failures, total)
    wait_for(
        lambda: (
            len(lane.replicas) == 2
            and all(r.ready for r in lane.replicas)
            and victim not in {r.pid for r in lane.replicas}
        ),
        message="the killed replica was not replaced",
    )
