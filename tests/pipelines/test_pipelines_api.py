from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.core.db import utcnow
from app.pipelines.models import Pipeline
from app.pipelines.service import log_path
from tests.conftest import InlineJobs
from tests.pipelines.helpers import ci_spec, upload_churn


def test_create_get_and_graph(api: TestClient) -> None:
    response = api.post("/api/v1/pipelines", json={"name": "churn-ci", "spec": ci_spec()})
    assert response.status_code == 201, response.text
    assert api.get("/api/v1/pipelines/churn-ci").json()["spec"]["tasks"][0]["name"] == "train"
    mermaid = api.get("/api/v1/pipelines/churn-ci/graph").text
    assert mermaid.startswith("flowchart LR") and "evaluate" in mermaid
    dot = api.get("/api/v1/pipelines/churn-ci/graph?format=dot").text
    assert dot.startswith("digraph") and "package" in dot


@pytest.mark.parametrize(
    ("tasks", "fragment"),
    [
        ([{"name": "a", "type": "train2"}], "type"),
        ([{"name": "a", "type": "package", "depends_on": ["ghost"]}], "ghost"),
        (
            [
                {"name": "a", "type": "package", "depends_on": ["b"]},
                {"name": "b", "type": "package", "depends_on": ["a"]},
            ],
            "cycle",
        ),
        (
            [{"name": "a", "type": "train", "params": {"estimator": "os.system", "target": "y"}}],
            "not allowed",
        ),
        ([{"name": "a", "type": "register", "params": {"model": "m", "colour": "red"}}], "colour"),
        (
            [
                {
                    "name": "a",
                    "type": "deploy",
                    "params": {"deployment": "d", "environment": "production"},
                }
            ],
            "pipelines deploy to staging",
        ),
        ([{"name": "a", "type": "deploy", "params": {"deployment": "Not_A_Name"}}], "deployment"),
    ],
)
def test_invalid_specs_are_422_naming_the_problem(
    api: TestClient, tasks: list, fragment: str
) -> None:
    response = api.post("/api/v1/pipelines", json={"name": "bad", "spec": {"tasks": tasks}})
    assert response.status_code == 422, response.text
    assert fragment in response.text
    assert api.get("/api/v1/pipelines/bad").status_code == 404


def test_schedule_validation_pause_and_tick(
    api: TestClient, jobs: InlineJobs, session: Session
) -> None:
    bad = api.post(
        "/api/v1/pipelines", json={"name": "s", "spec": ci_spec(), "schedule": "every day"}
    )
    assert bad.status_code == 422 and "cron" in bad.json()["error"]["message"]
    created = api.post(
        "/api/v1/pipelines", json={"name": "s", "spec": ci_spec(), "schedule": "*/5 * * * *"}
    ).json()
    assert created["next_run_at"] is not None
    paused = api.post("/api/v1/pipelines/s/pause").json()
    assert paused["schedule_paused"] is True and paused["next_run_at"] is None
    resumed = api.post("/api/v1/pipelines/s/resume").json()
    assert resumed["schedule_paused"] is False and resumed["next_run_at"] is not None

    from app.core.jobs import run_job
    from app.pipelines.housekeeping import SCHEDULE_JOB

    pipeline = session.query(Pipeline).filter_by(name="s").one()
    pipeline.next_run_at = utcnow() - timedelta(seconds=1)
    session.commit()
    run_job(jobs.ctx, SCHEDULE_JOB, {})
    runs = api.get("/api/v1/pipeline-runs?pipeline=s").json()["items"]
    assert len(runs) == 1 and runs[0]["trigger"] == "schedule"
    run_job(jobs.ctx, SCHEDULE_JOB, {})  # not due again: nothing new
    assert len(api.get("/api/v1/pipeline-runs?pipeline=s").json()["items"]) == 1
    assert api.post("/api/v1/pipelines/s/pause").status_code == 200
    no_schedule = api.post("/api/v1/pipelines", json={"name": "n", "spec": ci_spec()})
    assert no_schedule.status_code == 201
    assert api.post("/api/v1/pipelines/n/pause").status_code == 409


def test_manual_run_queues_the_first_task_and_cancel_stops_the_rest(
    api: TestClient, jobs: InlineJobs
) -> None:
    api.post("/api/v1/pipelines", json={"name": "p", "spec": ci_spec(entrypoint=False)})
    run = api.post("/api/v1/pipelines/p/runs", json={}).json()
    assert run["status"] == "queued" and [t["status"] for t in run["tasks"]] == ["pending"] * 4
    from app.core.jobs import run_job

    message = jobs.queue.pop(0)
    assert message.task == "pipelines.advance"
    run_job(jobs.ctx, message.task, message.payload)
    state = api.get(f"/api/v1/pipeline-runs/{run['id']}").json()
    assert state["status"] == "running"
    assert [t["status"] for t in state["tasks"]] == ["queued", "pending", "pending", "pending"]
    jobs.queue.clear()

    cancelled = api.post(f"/api/v1/pipeline-runs/{run['id']}/cancel").json()
    assert cancelled["cancel_requested"] is True
    jobs.run()
    final = api.get(f"/api/v1/pipeline-runs/{run['id']}").json()
    assert final["status"] == "cancelled"
    assert {t["status"] for t in final["tasks"]} == {"cancelled"}
    assert api.post(f"/api/v1/pipeline-runs/{run['id']}/cancel").status_code == 409


def test_missing_things(api: TestClient) -> None:
    assert api.post("/api/v1/pipelines/none/runs", json={}).status_code == 404
    assert api.get("/api/v1/pipeline-runs/9999").status_code == 404
    api.post("/api/v1/pipelines", json={"name": "p", "spec": ci_spec()})
    assert (
        api.post("/api/v1/pipelines/p/runs", json={"dataset_version_id": 9999}).status_code == 422
    )
    assert api.post("/api/v1/pipelines/p/runs", json={"source": "nope"}).status_code == 404
    assert api.post("/api/v1/pipelines", json={"name": "p", "spec": ci_spec()}).status_code == 409


def test_log_offsets_are_bounded_and_past_the_end_reads_nothing(
    api: TestClient, app: FastAPI
) -> None:
    api.post("/api/v1/pipelines", json={"name": "p", "spec": ci_spec()})
    run = api.post("/api/v1/pipelines/p/runs", json={}).json()
    path = log_path(app.state.artifacts, run["id"], "train")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"hello log\n")
    url = f"/api/v1/pipeline-runs/{run['id']}/tasks/train/logs"
    assert api.get(url, params={"offset": 6}).json()["text"] == "log\n"
    huge = api.get(url, params={"offset": "99999999999999999999"})
    assert huge.status_code == 422, huge.text
    assert huge.json()["error"]["details"][0]["loc"] == ["query", "offset"]
    for offset in (2**63 - 1, 10**15):  # in range but far past the end: nothing, no OSError
        far = api.get(url, params={"offset": offset})
        assert far.status_code == 200, far.text
        assert far.json()["text"] == "" and far.json()["next_offset"] == offset


def train_spec(**params: Any) -> dict[str, Any]:
    spec = ci_spec(entrypoint=False)
    spec["tasks"][0]["params"] |= params
    return spec


def test_hyperparameters_are_checked_against_the_estimator_when_the_pipeline_is_written(
    api: TestClient,
) -> None:
    answer = api.post(
        "/api/v1/pipelines",
        json={"name": "p", "spec": train_spec(hyperparameters={"max_iters": 500})},
    )
    assert answer.status_code == 422, answer.text
    [detail] = answer.json()["error"]["details"]
    assert detail["loc"] == ["body", "spec", "tasks", 0, "params", "hyperparameters"]
    assert "unknown hyperparameter 'max_iters' for LogisticRegression" in detail["message"]
    assert "max_iter," in detail["message"] and "C," in detail["message"]  # the valid ones
    refused = api.post(
        "/api/v1/pipelines", json={"name": "p", "spec": train_spec(hyperparameters={"C": -1})}
    )
    assert refused.status_code == 422 and "'C'" in refused.json()["error"]["message"]
    assert (
        api.post("/api/v1/pipelines", json={"name": "p", "spec": train_spec()}).status_code == 201
    )
    patched = api.patch(
        "/api/v1/pipelines/p", json={"spec": train_spec(hyperparameters={"depth": 3})}
    )
    assert patched.status_code == 422 and "'depth'" in patched.json()["error"]["message"]
    assert api.get("/api/v1/pipelines/p").json()["spec"]["tasks"][0]["params"][
        "hyperparameters"
    ] == {"max_iter": 500}


def test_hyperparameters_a_run_is_asked_for_with_are_checked_before_it_starts(
    api: TestClient,
) -> None:
    assert (
        api.post("/api/v1/pipelines", json={"name": "p", "spec": train_spec()}).status_code == 201
    )
    answer = api.post("/api/v1/pipelines/p/runs", json={"params": {"hyperparameters": {"Cc": 2}}})
    assert answer.status_code == 422, answer.text
    [detail] = answer.json()["error"]["details"]
    assert detail["loc"] == ["body", "params", "hyperparameters"]
    assert "unknown hyperparameter 'Cc'" in detail["message"]
    assert api.get("/api/v1/pipeline-runs", params={"pipeline": "p"}).json()["items"] == []
    fine = api.post("/api/v1/pipelines/p/runs", json={"params": {"hyperparameters": {"C": 2}}})
    assert fine.status_code == 202, fine.text


def test_the_target_is_checked_against_the_dataset_when_it_is_known(api: TestClient) -> None:
    unknown_yet = api.post(
        "/api/v1/pipelines", json={"name": "early", "spec": train_spec(target="churn")}
    )
    assert unknown_yet.status_code == 201  # the dataset may be uploaded later: not judged
    upload_churn(api)
    answer = api.post("/api/v1/pipelines", json={"name": "p", "spec": train_spec(target="churn")})
    assert answer.status_code == 422, answer.text
    [detail] = answer.json()["error"]["details"]
    assert detail["loc"] == ["body", "spec", "tasks", 0, "params", "target"]
    assert "target column 'churn' is not in dataset 'churn'" in detail["message"]
    assert "churned" in detail["message"]  # the columns there are


def test_a_train_task_naming_an_unknown_dataset_says_so_and_what_exists(
    api: TestClient, jobs: InlineJobs
) -> None:
    upload_churn(api)
    api.post("/api/v1/pipelines", json={"name": "p", "spec": train_spec(dataset="chrun")})
    run = api.post("/api/v1/pipelines/p/runs", json={}).json()
    jobs.run()
    train = api.get(f"/api/v1/pipeline-runs/{run['id']}").json()["tasks"][0]
    assert train["status"] == "failed", train
    assert "dataset 'chrun' does not exist (did you mean 'churn'?)" in train["error"]
    assert "set params.dataset" not in train["error"]
