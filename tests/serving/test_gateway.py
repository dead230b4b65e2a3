"""The gateway with real replica processes over real HTTP, on a committed database."""

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.serving.routing import bucket
from tests.registry.helpers import FEATURES
from tests.serving.conftest import rows, wait_for

pytestmark = pytest.mark.slow


def test_predictions_route_validate_and_stick(stack: dict[str, Any]) -> None:
    base, frame = stack["base"], stack["frame"]
    with httpx.Client(base_url=base, headers=stack["auth"], timeout=30) as http:
        answer = http.post(
            "/serve/churn/predict", json={"rows": rows(frame)}, headers={"x-user-id": "alice"}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        model = stack[body["variant"]]
        assert body["predictions"] == model.predict(frame[FEATURES].head(5)).tolist()
        np.testing.assert_allclose(
            body["probabilities"], model.predict_proba(frame[FEATURES].head(5)), atol=1e-9
        )
        assert answer.headers["x-request-id"] == body["request_id"]
        assert answer.headers["x-flywheel-model-version"] == f"churn/{body['model_version']}"
        for _ in range(20):  # alice always sees the same variant
            again = http.post(
                "/serve/churn/predict",
                json={"rows": rows(frame, 1)},
                headers={"x-user-id": "alice"},
            )
            assert again.json()["variant"] == body["variant"]

        wrong = http.post(
            "/serve/churn/predict", json={"rows": [{"age": "old", "income": 1.0, "city": "Nice"}]}
        )
        assert wrong.status_code == 422 and "age" in wrong.json()["error"]["message"]
        assert http.post("/serve/nope/predict", json={"rows": []}).status_code == 404
        anonymous = httpx.post(f"{base}/serve/churn/predict", json={"rows": rows(frame, 1)})
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
        assert httpx.get(f"{base}/gateway/deployments/churn").status_code == 401

        # the data plane reads and writes HTTP itself: the edges of that
        given = http.post(
            "/serve/churn/predict", json={"rows": rows(frame, 1)}, headers={"x-request-id": "r-1"}
        )
        assert given.headers["x-request-id"] == "r-1" == given.json()["request_id"]
        deep = http.post("/serve/churn/predict", content=b"[" * 100_000 + b"]" * 100_000)
        assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]["message"]
        broken = http.post("/serve/churn/predict", content=b"{not json")
        assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
        assert broken.headers["x-request-id"]
        assert http.get("/serve/churn/predict").status_code == 405
        whole = json.dumps({"rows": rows(frame, 2)}).encode()
        chunked = http.post(  # several body messages (chunked transfer encoding)
            "/serve/churn/predict", content=iter([whole[:10], whole[10:50], whole[50:]])
        )
        assert chunked.status_code == 200 and len(chunked.json()["predictions"]) == 2

        variants = [
            http.post("/serve/churn/predict", json={"rows": rows(frame, 1)}).json()["variant"]
            for _ in range(300)
        ]
        assert 0.8 <= variants.count("blue") / 300 <= 0.97


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_crashed_replica_is_replaced(stack: dict[str, Any]) -> None:
    """Replicas are forked from the gateway's pre-imported template; with the template gone
    too, the replacement starts as a fresh interpreter, and serves all the same."""
    base, app = stack["base"], stack["app"]
    gateway = app.state.gateway
    served = gateway.served["churn"]
    blue = next(lane for lane in served.lanes if lane.name == "blue")
    victim = blue.replicas[0]
    template = gateway.launcher.template
    assert template is not None and parent_pid(victim.pid) == template.pid
    template.kill()
    template.wait()
    served.processes[victim.port].kill()
    served.processes[victim.port].wait()
    user = next(f"u{i}" for i in range(1000) if bucket("churn", f"u{i}") < 90)  # lands on blue
    # the gateway still thinks it is up
    with httpx.Client(base_url=base, headers=stack["auth"], timeout=60) as http:
        retried = http.post(
            "/serve/churn/predict",
            json={"rows": rows(stack["frame"], 1)},
            headers={"x-user-id": user},
        )
    assert retried.status_code == 200, retried.text
    assert retried.json()["variant"] == "blue"
    deadline = time.monotonic() + 180
    while not (blue.replicas and blue.replicas[0].port != victim.port and blue.replicas[0].ready):
        assert time.monotonic() < deadline, "the crashed replica was not replaced"
        time.sleep(0.1)
    assert parent_pid(blue.replicas[0].pid) == os.getpid()  # spawned, not forked
    with httpx.Client(base_url=base, headers=stack["auth"], timeout=30) as http:
        ok = [
            http.post("/serve/churn/predict", json={"rows": rows(stack["frame"], 1)}).status_code
            for _ in range(20)
        ]
    assert ok == [200] * 20


def test_scale_to_zero_and_cold_start(stack: dict[str, Any]) -> None:
    base, app, frame = stack["base"], stack["app"], stack["frame"]
    gateway = app.state.gateway
    deployment = {
        "name": "cold",
        "variants": [{"name": "only", "model": "churn/1"}],
        "autoscaling": {
            "min_replicas": 0,
            "max_replicas": 2,
            "scale_to_zero_after_seconds": 2,
            "scale_down_stabilization_seconds": 0,
            # a short averaging window: the held cold-start request must age out of it
            "window_seconds": 1,
        },
    }
    assert stack["api"].post("/api/v1/deployments", json=deployment).status_code == 201
    deadline = time.monotonic() + 180
    while "cold" not in gateway.served:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    lane = gateway.served["cold"].lanes[0]
    assert lane.replicas == []  # nothing runs before the first request
    with httpx.Client(base_url=base, headers=stack["auth"], timeout=60) as http:
        answer = http.post("/serve/cold/predict", json={"rows": rows(frame, 1)})
    assert answer.status_code == 200, (answer.text, lane.decisions, lane.replicas)
    assert len(lane.cold_starts) == 1 and lane.cold_starts[0] > 0  # measured
    deadline = time.monotonic() + 180
    while lane.replicas:
        assert time.monotonic() < deadline, lane.decisions
        time.sleep(0.2)
    assert lane.decisions[-1]["desired"] == 0 and "no requests" in lane.decisions[-1]["reason"]


def test_open_inference_protocol_and_actual_state(stack: dict[str, Any]) -> None:
    base, frame = stack["base"], stack["frame"]
    sample = frame[FEATURES].head(3)
    inputs = [
        {
            "name": c,
            "shape": [3],
            "datatype": "BYTES" if c == "city" else "FP64",
            "data": [v.item() if hasattr(v, "item") else v for v in sample[c]],
        }
        for c in FEATURES
    ]
    with httpx.Client(base_url=base, headers=stack["auth"], timeout=30) as http:
        answer = http.post(
            "/v2/models/churn/infer", json={"inputs": inputs}, headers={"x-user-id": "bob"}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        variant = http.post(
            "/serve/churn/predict", json={"rows": rows(frame, 1)}, headers={"x-user-id": "bob"}
        ).json()["variant"]
        predictions = next(o for o in body["outputs"] if o["name"] == "predictions")
        assert predictions["data"] == stack[variant].predict(sample).tolist()
        probabilities = next(o for o in body["outputs"] if o["name"] == "probabilities")
        assert probabilities["shape"] == [3, 2] and len(probabilities["data"]) == 6
        assert body["model_name"] == "churn" and body["id"] == answer.headers["x-request-id"]
        bad = http.post(
            "/v2/models/churn/infer",
            json={"inputs": [{"name": "age", "data": [1, 2]}, {"name": "city", "data": ["a"]}]},
        )
        assert bad.status_code == 422 and "same number of rows" in bad.json()["error"]["message"]

        state = http.get("/gateway/deployments/churn").json()
        blue = next(v for v in state["variants"] if v["name"] == "blue")
        assert blue["replicas"][0]["ready"] is True and blue["replicas"][0]["pid"] > 0
        assert blue["replicas"][0]["cold_start_seconds"] > 0 and blue["cold_starts_seconds"]
        assert http.get("/gateway/deployments/nope").status_code == 404
        unknown = http.get("/no/such/route")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_explain_through_the_gateway_uses_the_variants_version(stack: dict[str, Any]) -> None:
    base, frame, api = stack["base"], stack["frame"], stack["api"]
    sample = rows(frame, 3)
    with httpx.Client(base_url=base, headers=stack["auth"], timeout=60) as http:
        answer = http.post(
            "/serve/churn/explain", json={"rows": sample}, headers={"x-user-id": "carol"}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        predicted = http.post(
            "/serve/churn/predict", json={"rows": sample}, headers={"x-user-id": "carol"}
        ).json()
        bad = http.post("/serve/churn/explain", json={"rows": [{"age": "old"}]})
    assert body["variant"] == predicted["variant"] == answer.headers["x-flywheel-variant"]
    assert body["version"] == predicted["model_version"]
    assert body["features"] == FEATURES and body["additivity"]["holds"] is True
    direct = api.post(
        f"/api/v1/models/churn/versions/{body['version']}/explain", json={"rows": sample}
    ).json()
    for ours, theirs in zip(body["rows"], direct["rows"], strict=True):
        for a, b in zip(ours["outputs"], theirs["outputs"], strict=True):
            assert a["shap_values"] == pytest.approx(b["shap_values"], abs=1e-9)
    assert bad.status_code == 422 and "age" in bad.json()["error"]["message"]


def test_a_fresh_gateway_is_not_ready_and_answers_503_until_it_has_loaded(
    stack: dict[str, Any],
) -> None:
    """A second gateway on the same database: until its replicas are up, readiness is 503
    and a predict is a 503 to retry, never a 404; then both are 200."""
    from app.serving.gateway import create_gateway
    from tests.live import live_server

    running = stack["app"].state.gateway
    fresh = create_gateway(running.settings, stack["factory"], interval=0.5)
    seen: list[tuple[int, int]] = []
    with (
        live_server(fresh) as base,
        httpx.Client(base_url=base, headers=stack["auth"], timeout=60) as http,
    ):
        deadline = time.monotonic() + 120
        while True:
            ready = http.get("/v2/health/ready").status_code
            answer = http.post("/serve/churn/predict", json={"rows": rows(stack["frame"], 1)})
            seen.append((ready, answer.status_code))
            if ready == 200 and answer.status_code == 200:
                break
            assert answer.status_code == 503, answer.text
            assert "retry-after" in answer.headers
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
    assert all(status != 404 for _, status in seen)
    assert (200, 503) not in seen  # never ready while a predict still had to wait


def _held_by_blue(stack: dict[str, Any]) -> tuple[Any, threading.Thread, dict[str, httpx.Response]]:
    """A request sticky to blue, held while blue has no ready replica (its replica is being
    stopped): the moment a rollout completing retires blue."""
    gateway = stack["app"].state.gateway
    blue = next(lane for lane in gateway.served["churn"].lanes if lane.name == "blue")
    for replica in blue.replicas:
        replica.ready = False
    user = next(f"u{i}" for i in range(1000) if bucket("churn", f"u{i}") < 90)
    got: dict[str, httpx.Response] = {}

    def send() -> None:
        got["answer"] = httpx.post(
            f"{stack['base']}/serve/churn/predict",
            json={"rows": rows(stack["frame"], 1)},
            headers={**stack["auth"], "x-user-id": user},
            timeout=120,
        )

    thread = threading.Thread(target=send)
    thread.start()
    wait_for(lambda: blue.waiting == 1, message="the request did not wait on blue")
    return blue, thread, got


def test_a_request_held_by_a_variant_retired_meanwhile_is_served_by_one_that_serves(
    stack: dict[str, Any],
) -> None:
    blue, thread, got = _held_by_blue(stack)
    only_green = {"variants": [{"name": "green", "model": "churn/2", "weight": 100}]}
    changed = stack["api"].patch("/api/v1/deployments/churn", json=only_green)
    assert changed.status_code == 200, changed.text
    thread.join(timeout=120)
    answer = got["answer"]
    assert answer.status_code == 200, answer.text
    assert answer.json()["variant"] == "green" == answer.headers["x-flywheel-variant"]
    assert (
        answer.json()["predictions"]
        == stack["green"].predict(stack["frame"][FEATURES].head(1)).tolist()
    )
    assert blue.retired and blue.replicas == []


def test_a_request_no_variant_can_serve_is_a_503_to_retry(stack: dict[str, Any]) -> None:
    gateway = stack["app"].state.gateway
    green = next(lane for lane in gateway.served["churn"].lanes if lane.name == "green")
    for replica in green.replicas:
        replica.ready = False  # stopping too
    blue, thread, got = _held_by_blue(stack)
    assert stack["api"].delete("/api/v1/deployments/churn").status_code == 204
    thread.join(timeout=120)
    answer = got["answer"]
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert error["code"] == "no_replica" and "no variant of 'churn'" in error["message"]
    assert answer.headers["retry-after"]
    assert blue.retired and "churn" not in gateway.served
