"""A staging deployment serving churn v1 and a retraining pipeline for it; labelled
production traffic written as the gateway writes it, with feedback through the API."""

from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.core.jobs import run_job
from app.training.jobs import TICK_JOB
from tests.conftest import InlineJobs
from tests.deployments.traffic import record
from tests.registry.helpers import FEATURES, churn_frame

LR = "sklearn.linear_model.LogisticRegression"


def retrain_spec(estimator: str = LR, **hyperparameters: Any) -> dict[str, Any]:
    return {
        "tasks": [
            {
                "name": "train",
                "type": "train",
                "params": {
                    "estimator": estimator,
                    "hyperparameters": hyperparameters or {"max_iter": 500},
                    "target": "churned",
                },
            },
            {"name": "evaluate", "type": "evaluate", "depends_on": ["train"]},
            {
                "name": "register",
                "type": "register",
                "depends_on": ["evaluate"],
                "params": {"model": "churn"},
                "when": "blessed:evaluate",
            },
        ]
    }


def plain(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in frame[FEATURES].to_dict("records")
    ]


@pytest.fixture
def served(api: TestClient, versions: None) -> TestClient:
    """churn v1 serving all of `churn` (staging), and a pipeline that retrains it."""
    return serve_v1_with_retrain_pipeline(api)


def serve_v1_with_retrain_pipeline(api: TestClient) -> TestClient:
    created = api.post(
        "/api/v1/deployments",
        json={
            "name": "churn",
            "variants": [{"name": "v1", "model": "churn/1"}],
            "rollout": {"strategy": "all_at_once"},
        },
    )
    assert created.status_code == 201, created.text
    pipeline = api.post("/api/v1/pipelines", json={"name": "retrain", "spec": retrain_spec()})
    assert pipeline.status_code == 201, pipeline.text
    return api


Labelled = Callable[..., list[str]]


@pytest.fixture
def labelled(api: TestClient, session_factory: sessionmaker[Session]) -> Labelled:
    """`labelled(frame, flip=False)`: one logged request per row, answered with the true
    label, then feedback with the label (inverted when flip: the concept changed)."""

    def send(frame: pd.DataFrame, *, flip: bool = False, variant: str = "v1") -> list[str]:
        truth = frame["churned"].astype(int).tolist()
        ids = record(
            session_factory,
            "churn",
            variant,
            len(frame),
            rows=plain(frame),
            predictions=truth,
        )
        labels = [1 - t for t in truth] if flip else truth
        items = [{"request_id": i, "label": y} for i, y in zip(ids, labels, strict=True)]
        reply = api.post("/api/v1/deployments/churn/feedback", json={"items": items})
        assert reply.status_code == 200, reply.text
        return ids

    return send


def tick(jobs: InlineJobs) -> None:
    run_job(jobs.ctx, TICK_JOB, {})


def evaluations(api: TestClient, policy_id: int) -> list[dict[str, Any]]:
    reply = api.get(f"/api/v1/policies/{policy_id}/evaluations", params={"page_size": 200})
    assert reply.status_code == 200, reply.text
    return list(reply.json()["items"])


def frame(rows: int = 300, seed: int = 11) -> pd.DataFrame:
    return churn_frame(rows=rows, seed=seed)
