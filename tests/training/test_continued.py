"""Retrains that continue the served model instead of starting over: a warm-started forest
grows trees, an online SGD model learns each new batch of labelled rows with partial_fit;
both record the version they continued from."""

from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import unit_of_work
from app.ml import training
from app.pipelines.spec import ALLOWED_ESTIMATORS
from app.training import triggers
from app.training.models import RetrainingPolicy
from tests.conftest import InlineJobs
from tests.registry.helpers import Registry
from tests.training.conftest import Labelled, evaluations, frame, retrain_spec, tick

URL = "/api/v1/policies"


def serve(api: TestClient, tmp_path: Path, jobs: InlineJobs, estimator: str, **hyper: Any) -> int:
    """Register a model of this estimator as the next churn version and serve it."""
    model = training.fit_builtin(
        frame(200, seed=3),
        target="churned",
        estimator=estimator,
        hyperparameters={"random_state": 0, **hyper},
        preprocessing="auto",
        allowed=ALLOWED_ESTIMATORS,
    )
    registry = Registry(api, tmp_path)
    dataset = registry.dataset_version(frame(200, seed=3), name="churn-data")
    version = int(registry.register("churn", model, dataset["id"])["version"])
    jobs.run()
    variants = [{"name": f"v{version}", "model": f"churn/{version}"}]
    assert api.patch("/api/v1/deployments/churn", json={"variants": variants}).status_code == 200
    spec = retrain_spec(estimator, **hyper)
    spec["tasks"][1]["params"] = {"compare_to_champion": False}  # registration not in doubt
    assert api.post("/api/v1/pipelines", json={"name": "more", "spec": spec}).status_code == 201
    return version


def task_outputs(api: TestClient, run_id: int, task: str) -> dict[str, Any]:
    run = api.get(f"/api/v1/pipeline-runs/{run_id}").json()
    assert run["status"] == "succeeded", run
    return dict(next(t for t in run["tasks"] if t["name"] == task)["outputs"])


def test_warm_start_adds_trees_to_the_served_forest_and_records_the_parent(
    served: TestClient, labelled: Labelled, jobs: InlineJobs, tmp_path: Path
) -> None:
    parent = serve(
        served, tmp_path, jobs, "sklearn.ensemble.RandomForestClassifier", n_estimators=10
    )
    labelled(frame(200, seed=11), variant=f"v{parent}")
    policy = served.post(
        URL,
        json={
            "name": "grow",
            "deployment": "churn",
            "pipeline": "more",
            "training": {"mode": "warm_start", "add_estimators": 5},
            "window": {"kind": "last_n", "n": 150},
        },
    ).json()
    evaluation = served.post(f"{URL}/{policy['id']}/trigger", json={}).json()
    jobs.run()
    trained = task_outputs(served, evaluation["pipeline_run_id"], "train")
    assert trained["parent_version"] == parent
    assert trained["continued"]["method"] == "warm_start"
    assert (
        trained["continued"]["estimators_before"],
        trained["continued"]["estimators_after"],
    ) == (
        10,
        15,
    )
    registered = task_outputs(served, evaluation["pipeline_run_id"], "register")
    child = served.get(f"/api/v1/models/churn/versions/{registered['version']}").json()
    assert child["parent_version"] == parent
    edges = served.get(f"/api/v1/models/churn/versions/{registered['version']}/lineage").json()
    assert any(e["relation"] == "warm_started_from" for e in edges["edges"])


@pytest.mark.slow  # many task subprocesses: run in the Postgres pass, not again on SQLite
def test_online_policy_applies_only_new_labelled_rows_with_partial_fit_at_its_cadence(
    served: TestClient,
    labelled: Labelled,
    jobs: InlineJobs,
    tmp_path: Path,
    session_factory: sessionmaker[Session],
) -> None:
    parent = serve(served, tmp_path, jobs, "sklearn.linear_model.SGDClassifier", loss="log_loss")
    labelled(frame(150, seed=11), variant=f"v{parent}")
    policy = served.post(
        URL,
        json={
            "name": "online",
            "deployment": "churn",
            "pipeline": "more",
            "training": {
                "mode": "online",
                "publish_every": "10m",
                "batch_size": 32,
                "min_rows": 50,
            },
            "cooldown": "1m",
        },
    ).json()

    def update() -> dict[str, Any]:
        with unit_of_work(session_factory) as session:
            stored = session.get(RetrainingPolicy, policy["id"])
            assert stored is not None and stored.next_online_at is not None
            due = stored.next_online_at + timedelta(seconds=1)
            stored.last_retrain_at = due - timedelta(hours=1)  # the cooldown is long over
            triggers.tick(session, jobs.ctx.artifacts, stored, now=due)
        last = evaluations(served, policy["id"])[-1]
        assert last["outcome"] == "fired" and last["fired_by"] == ["online"], last
        jobs.run()
        return last

    first = update()
    assert first["window"]["rows"] == 150
    trained = task_outputs(served, first["pipeline_run_id"], "train")
    assert trained["continued"]["method"] == "partial_fit"
    assert trained["continued"]["batches"] == 4  # 120 training rows in batches of 32
    assert trained["parent_version"] == parent
    tick(jobs)  # registered, rolled out: the online model now serves
    tick(jobs)
    published = task_outputs(served, first["pipeline_run_id"], "register")["version"]
    assert served.get("/api/v1/models/churn/versions/champion").json()["version"] == published
    labelled(frame(20, seed=13), variant=f"v{published}")
    with unit_of_work(session_factory) as session:
        stored = session.get(RetrainingPolicy, policy["id"])
        assert stored is not None and stored.next_online_at is not None
        triggers.tick(session, jobs.ctx.artifacts, stored, now=stored.next_online_at)
    waiting = evaluations(served, policy["id"])[-1]
    assert waiting["outcome"] == "quiet" and "only 20 new labelled rows" in waiting["reason"]
    labelled(frame(40, seed=12), variant=f"v{published}")
    second = update()
    assert second["window"]["rows"] == 60  # only what arrived since the last update
    again = task_outputs(served, second["pipeline_run_id"], "train")
    assert again["parent_version"] == published


def test_an_online_policy_on_a_dataset_source_counts_that_datasets_new_rows(
    served: TestClient, jobs: InlineJobs, tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    serve(served, tmp_path, jobs, "sklearn.linear_model.SGDClassifier", loss="log_loss")
    rows = frame(80, seed=14)
    rows["ts"] = pd.date_range("2026-11-01", periods=80, freq="h", tz="UTC").astype(str)
    Registry(served, tmp_path).dataset_version(rows, name="stream")
    policy = served.post(
        URL,
        json={
            "name": "online-stream",
            "deployment": "churn",
            "pipeline": "more",
            "data": {"source": "dataset", "dataset": "stream", "time_column": "ts"},
            "training": {"mode": "online", "publish_every": "10m", "min_rows": 50},
        },
    ).json()
    with unit_of_work(session_factory) as session:
        stored = session.get(RetrainingPolicy, policy["id"])
        assert stored is not None and stored.next_online_at is not None
        triggers.tick(session, jobs.ctx.artifacts, stored, now=stored.next_online_at)
    last = evaluations(served, policy["id"])[-1]
    assert last["outcome"] == "fired" and last["fired_by"] == ["online"], last
    assert last["checks"][0]["numbers"]["new_rows"] == 80 and last["window"]["rows"] == 80
