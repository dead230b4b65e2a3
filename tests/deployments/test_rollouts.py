"""Promotion walks its steps and judges guardrails on what the gateway logged."""

import time
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import utcnow
from app.core.jobs import run_job
from app.core.security import Role
from app.deployments.jobs import ADVANCE_JOB
from tests.conftest import InlineJobs
from tests.deployments import traffic

URL = "/api/v1/deployments/churn"


def deploy(api: TestClient, **rollout: Any) -> None:
    policy = {"strategy": "canary", "canary_percent": 10, "bake_seconds": 0} | rollout
    policy.setdefault("guardrails", {"min_requests": 20})
    created = api.post(
        "/api/v1/deployments",
        json={
            "name": "churn",
            "variants": [{"name": "blue", "model": "churn/1"}],
            "rollout": policy,
        },
    )
    assert created.status_code == 201, created.text


def check(jobs: InlineJobs) -> None:
    run_job(jobs.ctx, ADVANCE_JOB, {})


def current(api: TestClient) -> dict[str, Any]:
    return api.get(f"{URL}/rollouts").json()["items"][-1]


def weights(api: TestClient) -> dict[str, int]:
    return {v["name"]: v["weight"] for v in api.get(URL).json()["variants"]}


def test_a_canary_holds_without_evidence_then_completes_and_moves_the_alias(
    api: TestClient, versions: None, jobs: InlineJobs, session_factory: sessionmaker[Session]
) -> None:
    deploy(api)
    before = api.get(URL).json()["generation"]
    promoted = api.post(f"{URL}/promote", json={"model": "churn/2", "set_alias": "champion"})
    assert promoted.status_code == 201, promoted.text
    rollout = promoted.json()
    assert rollout["steps"] == [10, 100] and rollout["percent"] == 10
    assert rollout["candidate_variant"] == "v2" and rollout["state"] == "running"
    assert weights(api) == {"blue": 90, "v2": 10}
    assert api.get(URL).json()["generation"] == before + 1

    check(jobs)
    check(jobs)  # a second check while still waiting does not repeat the hold
    held = current(api)
    assert [d["action"] for d in held["decisions"]] == ["start", "hold"]
    assert "0 of 20 requests" in held["decisions"][-1]["reason"]

    traffic.record(session_factory, "churn", "blue", 200)
    traffic.record(session_factory, "churn", "v2", 25)
    check(jobs)
    done = current(api)
    assert done["state"] == "completed" and done["percent"] == 100
    assert [d["action"] for d in done["decisions"]] == ["start", "hold", "complete"]
    numbers = done["decisions"][-1]["numbers"]
    assert numbers["candidate"]["requests"] == 25 and numbers["baseline"]["requests"] == 200
    assert weights(api) == {"v2": 100}
    champion = api.get("/api/v1/models/churn/versions/champion").json()
    assert champion["version"] == 2

    # undo the completed rollout by hand: the baseline version serves again
    undone = api.post(f"{URL}/rollback", json={"reason": "customer complaint"})
    assert undone.status_code == 200, undone.text
    assert undone.json()["state"] == "rolled_back"
    assert [(v["name"], v["model_version"]) for v in api.get(URL).json()["variants"]] == [
        ("blue", 1)
    ]


def test_linear_steps_advance_one_bake_at_a_time(
    api: TestClient, versions: None, jobs: InlineJobs, session_factory: sessionmaker[Session]
) -> None:
    deploy(api, strategy="linear", linear_steps=[25, 50, 75])
    assert api.post(f"{URL}/promote", json={"model": "churn/2"}).status_code == 201
    seen = []
    for _ in range(3):
        seen.append(weights(api)["v2"])
        traffic.record(session_factory, "churn", "blue", 30)
        traffic.record(session_factory, "churn", "v2", 30)
        check(jobs)
    assert seen == [25, 50, 75] and weights(api) == {"v2": 100}
    rollout = current(api)
    assert rollout["state"] == "completed"
    assert [(d["action"], d["percent"]) for d in rollout["decisions"]] == [
        ("start", 25),
        ("advance", 50),
        ("advance", 75),
        ("complete", 100),
    ]


@pytest.mark.parametrize(
    ("candidate", "needle"),
    [
        ({"errors": 6}, "error rate 20.00% on 30 requests"),
        ({"latency_ms": 80.0}, "p99"),
    ],
)
def test_a_guardrail_breach_rolls_back_by_itself(
    api: TestClient,
    versions: None,
    jobs: InlineJobs,
    session_factory: sessionmaker[Session],
    candidate: dict[str, Any],
    needle: str,
) -> None:
    deploy(api, bake_seconds=3600)  # the breach is caught during the bake, not after it
    assert api.post(f"{URL}/promote", json={"model": "churn/2"}).status_code == 201
    time.sleep(0.2)  # the requests below arrive (80 ms before they are logged) after the step
    traffic.ready_replica(session_factory, "churn", "v2", utcnow() - timedelta(seconds=0.5))
    traffic.record(session_factory, "churn", "blue", 100)
    traffic.record(session_factory, "churn", "v2", 30, **candidate)
    check(jobs)
    rollout = current(api)
    assert rollout["state"] == "rolled_back", rollout
    assert needle in rollout["reason"]
    assert rollout["decisions"][-1]["action"] == "rollback"
    assert rollout["decisions"][-1]["numbers"]["candidate"]["requests"] == 30
    assert weights(api) == {"blue": 100}


def test_requests_held_while_the_candidate_cold_starts_are_not_judged_as_its_latency(
    api: TestClient, versions: None, jobs: InlineJobs, session_factory: sessionmaker[Session]
) -> None:
    """The gateway holds the first requests until the new replica is ready: seconds that
    are its cold start. Latency is judged from readiness on, errors from the step's start."""
    deploy(api, bake_seconds=3600)
    assert api.post(f"{URL}/promote", json={"model": "churn/2"}).status_code == 201
    traffic.record(session_factory, "churn", "blue", 100)
    traffic.record(session_factory, "churn", "v2", 5, latency_ms=2500.0)  # held
    time.sleep(0.2)
    check(jobs)  # no replica is ready yet: no latency verdict
    traffic.ready_replica(session_factory, "churn", "v2", utcnow() - timedelta(seconds=0.5))
    traffic.record(session_factory, "churn", "blue", 100)
    traffic.record(session_factory, "churn", "v2", 30)
    check(jobs)
    rollout = current(api)
    assert rollout["state"] == "running", rollout
    numbers = rollout["decisions"][-1]["numbers"] if rollout["decisions"] else None
    traffic.record(session_factory, "churn", "v2", 30, latency_ms=80.0)  # slow once warm
    check(jobs)
    rollout = current(api)
    assert rollout["state"] == "rolled_back" and "p99" in rollout["reason"], (rollout, numbers)


def test_disagreement_on_mirrored_requests_rolls_back(
    api: TestClient, versions: None, jobs: InlineJobs, session_factory: sessionmaker[Session]
) -> None:
    deploy(api, bake_seconds=3600, guardrails={"min_requests": 20, "max_disagreement": 0.1})
    assert api.post(f"{URL}/promote", json={"model": "churn/2"}).status_code == 201
    variants = {v["name"]: v for v in api.get(URL).json()["variants"]}
    assert variants["v2"]["mirror"] is True and variants["blue"]["mirror"] is False
    ids = traffic.record(session_factory, "churn", "blue", 40, predictions=[1])
    # the candidate answers the same requests as a mirror: 12 of 40 differently
    traffic.record(
        session_factory,
        "churn",
        "v2",
        40,
        shadow=True,
        request_ids=ids,
        predictions=[0] * 3 + [1] * 7,
    )
    check(jobs)
    rollout = current(api)
    assert rollout["state"] == "rolled_back"
    assert rollout["decisions"][-1]["numbers"]["disagreement"] == {
        "pairs": 40,
        "differing": 12,
        "share": 0.3,
    }


def test_all_at_once_completes_at_once(api: TestClient, versions: None) -> None:
    deploy(api, strategy="all_at_once")
    rollout = api.post(f"{URL}/promote", json={"model": "churn/2", "variant": "green"}).json()
    assert rollout["state"] == "completed" and rollout["steps"] == [100]
    assert weights(api) == {"green": 100}


def test_manual_rollback_of_a_running_canary(api: TestClient, versions: None) -> None:
    deploy(api, bake_seconds=600)
    assert api.post(f"{URL}/promote", json={"model": "churn/2"}).status_code == 201
    rolled = api.post(f"{URL}/rollback").json()
    assert rolled["state"] == "rolled_back" and "by hand" in rolled["reason"]
    assert weights(api) == {"blue": 100}
    one = api.get(f"{URL}/rollouts/{rolled['id']}").json()
    assert [d["action"] for d in one["decisions"]] == ["start", "rollback"]


def test_promotions_that_cannot_start_say_why(
    api: TestClient, versions: None, auth: Any, client: TestClient
) -> None:
    assert api.post(f"{URL}/rollback").status_code == 404
    deploy(api)
    assert api.post(f"{URL}/rollback").status_code == 409  # nothing to roll back
    same = api.post(f"{URL}/promote", json={"model": "churn/1"})
    assert same.status_code == 409 and "already serves" in same.json()["error"]["message"]
    missing = api.post(f"{URL}/promote", json={"model": "churn/9"})
    assert missing.status_code == 422 and missing.json()["error"]["message"].startswith("model:")
    taken = api.post(f"{URL}/promote", json={"model": "churn/2", "variant": "blue"})
    assert taken.status_code == 409
    editor = auth(Role.editor)
    forbidden = client.post(
        f"{URL}/promote", json={"model": "churn/2", "set_alias": "champion"}, headers=editor
    )
    assert forbidden.status_code == 403
    assert api.post(f"{URL}/promote", json={"model": "churn/2"}).status_code == 201
    again = api.post(f"{URL}/promote", json={"model": "churn/2", "variant": "other"})
    assert again.status_code == 409 and "already running" in again.json()["error"]["message"]


def test_promotion_needs_a_single_live_variant(api: TestClient, versions: None) -> None:
    split = {
        "name": "churn",
        "variants": [
            {"name": "blue", "model": "churn/1", "weight": 50},
            {"name": "green", "model": "churn/2", "weight": 50},
        ],
    }
    assert api.post("/api/v1/deployments", json=split).status_code == 201
    refused = api.post(f"{URL}/promote", json={"model": "churn/2", "variant": "next"})
    assert refused.status_code == 409 and "A/B" in refused.json()["error"]["message"]


def test_a_candidate_that_ranks_features_differently_is_rolled_back(
    api: TestClient,
    versions: None,
    jobs: InlineJobs,
    tmp_path: Any,
) -> None:
    from tests.registry.helpers import Registry, churn_frame, fit_pipeline

    frame = churn_frame()
    registry = Registry(api, tmp_path)
    dataset = registry.dataset_version(frame)  # the same bytes: the same dataset version
    income_only = frame.assign(churned=(frame.income > 50_000).astype(int))
    registry.register("churn", fit_pipeline(income_only), dataset["id"])
    jobs.run()
    deploy(
        api,
        bake_seconds=3600,
        guardrails={"min_requests": 20, "min_attribution_ndcg": 0.95},
    )
    assert api.post(f"{URL}/promote", json={"model": "churn/3"}).status_code == 201
    check(jobs)
    held = current(api)
    assert held["state"] == "running"  # importances not computed yet: no verdict on them
    for version in (1, 3):
        asked = api.post(f"/api/v1/models/churn/versions/{version}/importance", json={})
        assert asked.status_code == 202, asked.text
    jobs.run()
    check(jobs)
    rollout = current(api)
    assert rollout["state"] == "rolled_back", rollout
    assert "ranks features differently" in rollout["reason"]
    assert rollout["decisions"][-1]["numbers"]["attribution_ndcg"] < 0.95
