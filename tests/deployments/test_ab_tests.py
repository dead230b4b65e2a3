"""A/B tests judged on feedback joined to what the gateway logged, and the feedback API."""

from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.core.security import Role
from tests.deployments import traffic

URL = "/api/v1/deployments/churn"


def split(api: TestClient) -> None:
    body = {
        "name": "churn",
        "variants": [
            {"name": "blue", "model": "churn/1", "weight": 50},
            {"name": "green", "model": "churn/2", "weight": 50},
        ],
    }
    assert api.post("/api/v1/deployments", json=body).status_code == 201


def served_with_labels(
    api: TestClient,
    session_factory: sessionmaker[Session],
    variant: str,
    n: int,
    accuracy: float,
    seed: int,
) -> None:
    """n answered requests of one row predicting 1; labels right with the given probability."""
    ids = traffic.record(session_factory, "churn", variant, n, predictions=[1])
    right = np.random.default_rng(seed).random(n) < accuracy
    items = [{"request_id": i, "label": 1 if ok else 0} for i, ok in zip(ids, right, strict=True)]
    answer = api.post(f"{URL}/feedback", json={"items": items})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": n, "matched": n}


def create_test(api: TestClient, **overrides: Any) -> dict[str, Any]:
    body = {"name": "new-model", "control": "blue", "treatment": "green", "min_samples": 200}
    created = api.post(f"{URL}/experiments", json=body | overrides)
    assert created.status_code == 201, created.text
    return dict(created.json())


def test_no_winner_before_the_sequential_test_says_so_then_the_better_variant_wins(
    api: TestClient, versions: None, session_factory: sessionmaker[Session]
) -> None:
    split(api)
    test = create_test(api, unit_key="x-user-id")
    assert api.get(URL).json()["unit_key"] == "x-user-id"
    served_with_labels(api, session_factory, "blue", 60, 0.6, seed=1)
    served_with_labels(api, session_factory, "green", 60, 0.9, seed=2)
    early = api.get(f"{URL}/experiments/{test['id']}").json()
    assert early["verdict"] == "insufficient_samples" and early["winner"] is None
    assert [a["samples"] for a in early["arms"]] == [60, 60]

    served_with_labels(api, session_factory, "blue", 400, 0.6, seed=3)
    served_with_labels(api, session_factory, "green", 400, 0.9, seed=4)
    result = api.get(f"{URL}/experiments/{test['id']}").json()
    assert result["verdict"] == "treatment_better" and result["winner"] == "green"
    assert result["p_value"] < 0.05 and result["ci_low"] > 0
    blue, green = result["arms"]
    assert blue["samples"] == green["samples"] == 460
    assert 0.5 < blue["mean"] < 0.7 and 0.85 < green["mean"] < 0.95
    assert abs(result["difference"] - (green["mean"] - blue["mean"])) < 1e-9

    stopped = api.post(f"{URL}/experiments/{test['id']}/stop").json()
    assert stopped["stopped_at"] is not None
    assert api.get(f"{URL}/experiments").json()["items"][0]["id"] == test["id"]


def test_equal_variants_get_no_winner(
    api: TestClient, versions: None, session_factory: sessionmaker[Session]
) -> None:
    split(api)
    test = create_test(api, min_samples=100)
    served_with_labels(api, session_factory, "blue", 500, 0.8, seed=5)
    served_with_labels(api, session_factory, "green", 500, 0.8, seed=6)
    result = api.get(f"{URL}/experiments/{test['id']}").json()
    assert result["verdict"] == "no_difference_yet" and result["winner"] is None
    assert result["ci_low"] < 0 < result["ci_high"]


def test_reward_metric_and_feedback_replacement(
    api: TestClient, versions: None, session_factory: sessionmaker[Session]
) -> None:
    split(api)
    test = create_test(api, metric="reward", min_samples=2)
    ids = traffic.record(session_factory, "churn", "blue", 3)
    for request_id, reward in zip(ids, (1.0, 2.0, 3.0), strict=True):
        assert (
            api.post(f"{URL}/feedback", json={"request_id": request_id, "reward": reward}).json()[
                "matched"
            ]
            == 1
        )
    # sending again replaces: the latest reward wins
    api.post(f"{URL}/feedback", json={"request_id": ids[0], "reward": 9.0})
    arms = api.get(f"{URL}/experiments/{test['id']}").json()["arms"]
    assert arms[0]["samples"] == 3 and arms[0]["mean"] == (9 + 2 + 3) / 3
    # feedback may arrive before its prediction is logged: accepted, joined later
    early = api.post(f"{URL}/feedback", json={"request_id": "not-yet", "labels": [1, 0]})
    assert early.json() == {"accepted": 1, "matched": 0}


def test_bad_experiments_and_feedback_are_refused_with_the_reason(
    api: TestClient, versions: None, client: TestClient, auth: Any
) -> None:
    assert api.post(f"{URL}/feedback", json={"request_id": "x", "label": 1}).status_code == 404
    split(api)
    same = api.post(
        f"{URL}/experiments", json={"name": "a", "control": "blue", "treatment": "blue"}
    )
    assert same.status_code == 422
    ghost = api.post(
        f"{URL}/experiments", json={"name": "a", "control": "blue", "treatment": "red"}
    )
    assert ghost.status_code == 422 and "red" in ghost.json()["error"]["message"]
    create_test(api)
    twice = api.post(
        f"{URL}/experiments", json={"name": "b", "control": "blue", "treatment": "green"}
    )
    assert twice.status_code == 409
    empty = api.post(f"{URL}/feedback", json={"request_id": "x"})
    assert empty.status_code == 422 and "label" in empty.text
    both = api.post(f"{URL}/feedback", json={"request_id": "x", "label": 1, "labels": [1]})
    assert both.status_code == 422
    assert api.get(f"{URL}/experiments/999").status_code == 404
    viewer = client.post(
        f"{URL}/feedback", json={"request_id": "x", "label": 1}, headers=auth(Role.viewer)
    )
    assert viewer.status_code == 403
