"""The gateway with real replica processes over real HTTP, on a committed database."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.artifacts import ArtifactStore
from app.core.config import Settings
from app.core.db import create_db_engine, create_session_factory
from app.core.jobs import JobContext
from app.core.migrate import upgrade
from app.core.security import Role
from app.main import create_app
from app.serving.gateway import create_gateway
from app.serving.routing import bucket
from tests.conftest import InlineJobs
from tests.dbutil import is_postgres_url, scratch_postgres
from tests.live import live_server
from tests.registry.helpers import FEATURES, Registry, churn_frame, fit_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """A committed database with two ready versions and a 90/10 deployment, and a gateway."""
    if is_postgres_url(database_url):
        context = scratch_postgres(database_url, prefix="flywheel_gateway")
    else:
        from contextlib import nullcontext

        context = nullcontext(f"sqlite:///{tmp_path / 'gateway.db'}")
    with context as url:
        upgrade(url)
        settings = Settings(
            home=tmp_path / "home", database_url=url, artifact_root=tmp_path / "artifacts"
        )
        monkeypatch.setenv("FLYWHEEL_DATABASE_URL", url)  # replicas read these
        monkeypatch.setenv("FLYWHEEL_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
        engine = create_db_engine(url)
        factory = create_session_factory(engine)
        store = ArtifactStore(settings.resolved_artifact_root)
        jobs = InlineJobs(JobContext(settings, store, factory))
        from app.auth import service as auth_service
        from app.core.db import unit_of_work

        with unit_of_work(factory) as session:
            _, token = auth_service.create_token(session, name="t", role=Role.admin)
        api = TestClient(create_app(settings, session_factory=factory, publish=jobs.publish))
        api.headers["Authorization"] = f"Bearer {token}"
        frame = churn_frame()
        registry = Registry(api, tmp_path)
        dataset = registry.dataset_version(frame)
        blue, green = fit_pipeline(frame), fit_pipeline(churn_frame(seed=5))
        registry.register("churn", blue, dataset["id"])
        registry.register("churn", green, dataset["id"])
        jobs.run()
        created = api.post(
            "/api/v1/deployments",
            json={
                "name": "churn",
                "variants": [
                    {"name": "blue", "model": "churn/1", "weight": 90},
                    {"name": "green", "model": "churn/2", "weight": 10},
                ],
                "autoscaling": {"min_replicas": 1, "max_replicas": 2},
                "unit_key": "x-user-id",
            },
        )
        assert created.status_code == 201, created.text
        gateway_app = create_gateway(settings, factory, interval=0.5)
        with live_server(gateway_app) as base:
            wait_ready(base, gateway_app)
            yield {
                "base": base,
                "blue": blue,
                "green": green,
                "frame": frame,
                "app": gateway_app,
                "api": api,
            }
        engine.dispose()


def wait_ready(base: str, app: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        served = app.state.gateway.served.get("churn")
        if (
            served
            and all(r.ready for lane in served.lanes for r in lane.replicas)
            and all(lane.replicas for lane in served.lanes)
        ):
            return
        time.sleep(0.1)
    raise AssertionError("replicas did not become ready")


def rows(frame: Any, n: int = 5) -> list[dict[str, Any]]:
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
        for r in frame[FEATURES].head(n).to_dict("records")
    ]


def test_predictions_route_validate_and_stick(stack: dict[str, Any]) -> None:
    base, frame = stack["base"], stack["frame"]
    with httpx.Client(base_url=base, timeout=30) as http:
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

        variants = [
            http.post("/serve/churn/predict", json={"rows": rows(frame, 1)}).json()["variant"]
            for _ in range(300)
        ]
        assert 0.8 <= variants.count("blue") / 300 <= 0.97


def test_a_crashed_replica_is_replaced(stack: dict[str, Any]) -> None:
    base, app = stack["base"], stack["app"]
    served = app.state.gateway.served["churn"]
    blue = next(lane for lane in served.lanes if lane.name == "blue")
    victim = blue.replicas[0]
    served.processes[victim.port].kill()
    served.processes[victim.port].wait()
    user = next(f"u{i}" for i in range(1000) if bucket("churn", f"u{i}") < 90)  # lands on blue
    with httpx.Client(base_url=base, timeout=60) as http:  # the gateway still thinks it is up
        retried = http.post(
            "/serve/churn/predict",
            json={"rows": rows(stack["frame"], 1)},
            headers={"x-user-id": user},
        )
    assert retried.status_code == 200, retried.text
    assert retried.json()["variant"] == "blue"
    deadline = time.monotonic() + 60
    while not (blue.replicas and blue.replicas[0].port != victim.port and blue.replicas[0].ready):
        assert time.monotonic() < deadline, "the crashed replica was not replaced"
        time.sleep(0.1)
    with httpx.Client(base_url=base, timeout=30) as http:
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
    deadline = time.monotonic() + 30
    while "cold" not in gateway.served:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    lane = gateway.served["cold"].lanes[0]
    assert lane.replicas == []  # nothing runs before the first request
    with httpx.Client(base_url=base, timeout=60) as http:
        answer = http.post("/serve/cold/predict", json={"rows": rows(frame, 1)})
    assert answer.status_code == 200, (answer.text, lane.decisions, lane.replicas)
    assert len(lane.cold_starts) == 1 and 0 < lane.cold_starts[0] < 30
    deadline = time.monotonic() + 30
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
    with httpx.Client(base_url=base, timeout=30) as http:
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
