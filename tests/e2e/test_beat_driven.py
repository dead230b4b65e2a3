"""What beat and the workers drive, on real processes: the API (uvicorn), a Celery worker, a
separate beat, the gateway and its replicas, on Postgres and Redis. Beat's intervals are made
short through settings; every check waits on a condition with a generous deadline and asserts
what happened, never how fast.

- an alert beat evaluates fires, and its webhook is retried with backoff until delivered;
- a canary walks its steps on beat's checks and completes, no request failing meanwhile;
- a canary that errors is rolled back by beat by itself;
- load raises a deployment's replicas on the real gateway and idleness brings them back."""

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.migrate import upgrade
from tests.dbutil import scratch_postgres, skip_unless_postgres
from tests.deployments.decisions import assert_walked
from tests.e2e.services import (
    Process,
    admin_token,
    redis_url,
    require_redis,
    service_env,
    start_api,
    start_beat,
    start_gateway,
    start_worker,
)
from tests.live import live_server
from tests.registry.helpers import FEATURES, Registry, churn_frame, fit_pipeline
from tests.subscriptions.receiver import Receiver

pytestmark = pytest.mark.slow
BACKOFF_SECONDS = 1.0
DEADLINE = 300.0  # generous: the machine may be loaded; nothing here asserts a duration


@dataclass
class Stack:
    api: httpx.Client
    gateway: str
    processes: list[Process] = field(default_factory=list)

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.output()[-4000:]}" for p in self.processes)


def wait(check: Callable[[], Any], what: str, stack: Stack, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{stack.logs()}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    skip_unless_postgres(database_url)
    broker = redis_url(4)
    require_redis(broker)
    root = tmp_path_factory.mktemp("beat-driven")
    with scratch_postgres(database_url, prefix="flywheel_beat") as url:
        upgrade(url)
        token = admin_token(url)
        env = service_env(url, broker, root / "home") | {
            "FLYWHEEL_ALERT_CHECK_SECONDS": "1",
            "FLYWHEEL_ROLLOUT_CHECK_SECONDS": "1",
            "FLYWHEEL_WEBHOOK_BACKOFF_SECONDS": str(BACKOFF_SECONDS),
            "FLYWHEEL_WEBHOOK_ALLOWED_HOSTS": '["127.0.0.1"]',  # the receiver runs here
        }
        processes: list[Process] = []
        try:
            api, base = start_api(env, root)
            processes.append(api)
            processes.append(start_worker(env, root, "driven", "-P", "prefork", "-c", "2"))
            processes.append(start_beat(env, root))
            gateway, gateway_url = start_gateway(env, root)
            processes.append(gateway)
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
                found = Stack(http, gateway_url, processes)
                register_versions(found, root)
                yield found
        finally:
            for process in reversed(processes):
                process.stop()


def register_versions(stack: Stack, root: Path) -> None:
    """churn/1 and churn/2 serve; churn/3 raises on a city it never saw (a buggy model)."""
    frame = churn_frame()
    registry = Registry(stack.api, root)  # type: ignore[arg-type]  # same calls as TestClient
    dataset = registry.dataset_version(frame)
    registry.register("churn", fit_pipeline(frame), dataset["id"])
    registry.register("churn", fit_pipeline(churn_frame(seed=5)), dataset["id"])
    registry.register("churn", fit_pipeline(frame, lenient=False), dataset["id"])

    def ready() -> bool:
        listed = stack.api.get("/api/v1/models/churn/versions").json()["items"]
        return sorted(v["version"] for v in listed if v["status"] == "ready") == [1, 2, 3]

    wait(ready, "the worker to register the three versions", stack)


def sample(n: int = 1, city: str | None = None) -> list[dict[str, Any]]:
    rows = [
        {str(k): (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
        for r in churn_frame(rows=max(n, 10))[FEATURES].head(n).to_dict("records")
    ]
    return [r | {"city": city} for r in rows] if city else rows


def actual(stack: Stack, name: str) -> dict[str, Any] | None:
    """What the gateway process runs for a deployment (over its HTTP API)."""
    reply = httpx.get(
        f"{stack.gateway}/gateway/deployments/{name}", headers=stack.api.headers, timeout=30
    )
    return dict(reply.json()) if reply.status_code == 200 else None


def ready_replicas(state: dict[str, Any] | None, variant: str) -> list[dict[str, Any]]:
    lanes = [v for v in (state or {}).get("variants", []) if v["name"] == variant]
    return [r for lane in lanes for r in lane["replicas"] if r["ready"]]


def deploy(stack: Stack, body: dict[str, Any]) -> None:
    created = stack.api.post("/api/v1/deployments", json=body)
    assert created.status_code == 201, created.text
    variant = body["variants"][0]["name"]
    wait(
        lambda: ready_replicas(actual(stack, body["name"]), variant),
        f"{body['name']} to be served",
        stack,
    )


@contextmanager
def traffic(
    stack: Stack, name: str, rows: list[dict[str, Any]], clients: int = 4
) -> Iterator[list[tuple[int, str | None, str]]]:
    """Clients posting predictions until the block ends: (status, variant, body) each."""
    stop = threading.Event()
    answers: list[tuple[int, str | None, str]] = []

    def client() -> None:
        with httpx.Client(base_url=stack.gateway, headers=stack.api.headers, timeout=120) as http:
            while not stop.is_set():
                reply = http.post(f"/serve/{name}/predict", json={"rows": rows})
                answers.append(
                    (reply.status_code, reply.headers.get("x-flywheel-variant"), reply.text)
                )

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield answers
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=180)


def rollout(stack: Stack, name: str) -> dict[str, Any]:
    return dict(stack.api.get(f"/api/v1/deployments/{name}/rollouts").json()["items"][0])


def test_an_alert_beat_evaluates_is_delivered_through_retries_with_backoff(stack: Stack) -> None:
    deploy(stack, {"name": "watched", "variants": [{"name": "blue", "model": "churn/1"}]})
    receiver = Receiver()
    receiver.answers = [(503, {}), (503, {})]  # the first two attempts fail, the third lands
    with live_server(receiver.app) as receiver_base:
        subscription = stack.api.post(
            "/api/v1/subscriptions",
            json={"url": f"{receiver_base}/hook", "event_types": ["alert.fired"]},
        )
        assert subscription.status_code == 201, subscription.text
        created = stack.api.post(
            "/api/v1/alert-rules",
            json={
                "name": "any traffic",
                "deployment": "watched",
                "metric": "request_rate",
                "operator": ">",
                "threshold": 0,
                "window": "1h",
            },
        )
        assert created.status_code == 201, created.text
        rule = created.json()
        with httpx.Client(base_url=stack.gateway, headers=stack.api.headers, timeout=60) as http:
            for _ in range(20):
                reply = http.post("/serve/watched/predict", json={"rows": sample()})
                assert reply.status_code == 200, reply.text

        def firing() -> list[dict[str, Any]]:
            alerts = stack.api.get("/api/v1/alerts", params={"state": "firing"}).json()["items"]
            return [a for a in alerts if a["rule_id"] == rule["id"]]

        [alert] = wait(firing, "beat to evaluate the rule and fire", stack)

        def delivered() -> list[dict[str, Any]]:
            path = f"/api/v1/subscriptions/{subscription.json()['id']}/deliveries"
            items = stack.api.get(path).json()["items"]
            return [d for d in items if d["status"] == "delivered"]

        [delivery] = wait(delivered, "the webhook to be delivered after its retries", stack)
    assert delivery["event_type"] == "alert.fired"
    assert [a["status_code"] for a in delivery["attempts"]] == [503, 503, 204]
    assert len(receiver.received) == 3  # once more after each failure, then no more
    assert {r["headers"]["webhook-id"] for r in receiver.received} == {delivery["message_id"]}
    assert all(Receiver.verified(r, subscription.json()["secret"]) for r in receiver.received)
    assert json.loads(receiver.received[-1]["body"]) == delivery["body"]
    assert delivery["body"]["data"]["alert"] == alert["id"]
    assert delivery["body"]["data"]["rule"] == rule["id"]
    # backed off: each retry waited at least the smallest jittered delay (half the nominal
    # base x 2^(n-1)); a lower bound, which a loaded machine can only lengthen
    at = [r["at"] for r in receiver.received]
    for attempt, (before, after) in enumerate(itertools.pairwise(at), start=1):
        assert after - before >= 0.5 * BACKOFF_SECONDS * 2 ** (attempt - 1) - 0.05, at
    assert alert["state"] == "firing"


def test_a_canary_walks_its_steps_on_beat_and_completes_with_no_failed_request(
    stack: Stack,
) -> None:
    deploy(
        stack,
        {
            "name": "walking",
            "variants": [{"name": "blue", "model": "churn/1"}],
            "rollout": {
                "strategy": "linear",
                "linear_steps": [25, 50],
                "bake_seconds": 1,
                # a loaded machine's latency is noise here: the verdicts are on errors
                "guardrails": {
                    "min_requests": 5,
                    "max_p99_latency_ratio": 100,
                    "p99_slack_ms": 60_000,
                },
            },
        },
    )
    with traffic(stack, "walking", sample()) as answers:
        promoted = stack.api.post("/api/v1/deployments/walking/promote", json={"model": "churn/2"})
        assert promoted.status_code == 201, promoted.text
        done = wait(
            lambda: (found := rollout(stack, "walking"))["state"] != "running" and found,
            "beat to walk the rollout to its end",
            stack,
        )
        # the baseline is retired at completion: requests keep landing on what serves
        wait(
            lambda: [v["name"] for v in (actual(stack, "walking") or {})["variants"]] == ["v2"],
            "the gateway to retire the baseline",
            stack,
        )
        served_before = len(answers)
        wait(lambda: len(answers) > served_before + 20, "traffic after the rollout", stack)
    assert done["state"] == "completed", done
    assert_walked(done["decisions"], [25, 50, 100])
    failed = [a for a in answers if a[0] != 200]
    assert not failed, failed[:5]
    assert {variant for _, variant, _ in answers} == {"blue", "v2"}
    assert answers[-1][1] == "v2"
    live = stack.api.get("/api/v1/deployments/walking").json()["variants"]
    assert [(v["model"], v["weight"]) for v in live] == [("churn/2", 100)]


def test_a_canary_that_errors_is_rolled_back_by_beat_by_itself(stack: Stack) -> None:
    deploy(
        stack,
        {
            "name": "risky",
            "variants": [{"name": "blue", "model": "churn/1"}],
            "rollout": {
                "strategy": "canary",
                "canary_percent": 50,
                "bake_seconds": 3600,  # it never advances: only a breach ends it
                "guardrails": {
                    "min_requests": 10,
                    "max_error_rate": 0.05,
                    "max_p99_latency_ratio": 100,
                    "p99_slack_ms": 60_000,
                },
            },
        },
    )
    promoted = stack.api.post("/api/v1/deployments/risky/promote", json={"model": "churn/3"})
    assert promoted.status_code == 201, promoted.text
    wait(lambda: ready_replicas(actual(stack, "risky"), "v3"), "the canary to start", stack)
    unseen = sample(city="Marseille")  # the canary's model raises on it; the baseline's not
    with traffic(stack, "risky", unseen) as answers:
        done = wait(
            lambda: (found := rollout(stack, "risky"))["state"] != "running" and found,
            "beat to roll the canary back",
            stack,
        )
    assert done["state"] == "rolled_back", done
    assert "error rate" in done["reason"]
    assert [d["action"] for d in done["decisions"]][-1] == "rollback"
    assert done["decisions"][-1]["numbers"]["candidate"]["errors"] > 0
    assert {variant for status, variant, _ in answers if status == 500} == {"v3"}
    wait(
        lambda: [v["name"] for v in (actual(stack, "risky") or {})["variants"]] == ["blue"],
        "the gateway to drop the canary",
        stack,
    )
    with httpx.Client(base_url=stack.gateway, headers=stack.api.headers, timeout=60) as http:
        after = [
            http.post("/serve/risky/predict", json={"rows": unseen}).status_code for _ in range(10)
        ]
    assert after == [200] * 10


def test_load_raises_replicas_on_the_gateway_and_idleness_brings_them_back_to_the_minimum(
    stack: Stack,
) -> None:
    deploy(
        stack,
        {
            "name": "elastic",
            "variants": [{"name": "only", "model": "churn/1"}],
            "autoscaling": {
                "min_replicas": 1,
                "max_replicas": 3,
                "target_in_flight": 1,
                "window_seconds": 4,
                "scale_down_stabilization_seconds": 4,
            },
        },
    )
    assert len(actual(stack, "elastic")["variants"][0]["replicas"]) == 1  # type: ignore[index]

    def spread() -> list[dict[str, Any]]:
        """Replicas beyond the first that are ready and have taken requests."""
        ready = ready_replicas(actual(stack, "elastic"), "only")
        return ready if len(ready) >= 2 and all(r["served"] > 0 for r in ready) else []

    with traffic(stack, "elastic", sample(200), clients=8) as answers:
        scaled = wait(spread, "load to raise the replicas and spread over them", stack)
    assert all(status == 200 for status, _, _ in answers), [a for a in answers if a[0] != 200][:3]
    pids = {r["pid"] for r in scaled}

    def back_to_minimum() -> dict[str, Any] | None:
        state = actual(stack, "elastic")
        lane = state["variants"][0] if state else None
        return lane if lane is not None and len(lane["replicas"]) == 1 else None

    lane = wait(back_to_minimum, "idleness to bring the replicas back to the minimum", stack)
    assert lane["replicas"][0]["pid"] in pids  # one of the warm ones stayed
    decisions = lane["scaling_decisions"]
    ups = [d for d in decisions if d["desired"] > d["current"]]
    downs = [d for d in decisions if d["desired"] < d["current"]]
    assert ups and "over target" in ups[0]["reason"], decisions
    assert downs and downs[-1]["desired"] == 1, decisions
    assert "under target" in downs[-1]["reason"], decisions
    with httpx.Client(base_url=stack.gateway, headers=stack.api.headers, timeout=60) as http:
        reply = http.post("/serve/elastic/predict", json={"rows": sample()})
    assert reply.status_code == 200, reply.text  # and still serving at the minimum
