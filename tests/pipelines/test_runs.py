"""Whole pipeline runs, executed by the same job functions the workers run (inline transport),
with real training subprocesses, real git repositories and real model files."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import InlineJobs
from tests.pipelines.helpers import ci_spec, create, git, make_repo, upload_churn


def test_builtin_estimator_pipeline_blesses_registers_and_packages(
    api: TestClient, jobs: InlineJobs
) -> None:
    dataset = upload_churn(api)
    create(api, "ci", ci_spec(entrypoint=False))
    run = api.post("/api/v1/pipelines/ci/runs", json={}).json()
    jobs.run()
    done = api.get(f"/api/v1/pipeline-runs/{run['id']}").json()
    assert done["status"] == "succeeded", done
    tasks = {t["name"]: t for t in done["tasks"]}
    assert [t["status"] for t in done["tasks"]] == ["succeeded"] * 4
    assert tasks["train"]["inputs"]["dataset_version_id"] == dataset["id"]
    assert tasks["train"]["outputs"]["dataset_digest"] == dataset["digest"]
    assert tasks["evaluate"]["outputs"]["verdict"] == "blessed"
    assert tasks["register"]["outputs"]["version"] == 1
    assert tasks["package"]["outputs"]["bundle_digest"]
    assert all(t["attempts"] == 1 and t["duration_ms"] is not None for t in done["tasks"])
    version = api.get("/api/v1/models/churn/versions/1").json()
    assert version["status"] == "ready" and version["package_status"] == "ready"
    assert {"accuracy", "holdout_accuracy", "train_accuracy"} <= set(version["metrics"])
    log = api.get(f"/api/v1/pipeline-runs/{run['id']}/tasks/train/logs").json()
    assert "training run" in log["text"] and log["complete"]


def test_rejected_model_ends_rejected_not_failed(api: TestClient, jobs: InlineJobs) -> None:
    upload_churn(api)
    create(api, "strict", ci_spec(entrypoint=False, min_accuracy=0.999))
    run = api.post("/api/v1/pipelines/strict/runs", json={}).json()
    jobs.run()
    done = api.get(f"/api/v1/pipeline-runs/{run['id']}").json()
    assert done["status"] == "rejected"
    statuses = {t["name"]: t["status"] for t in done["tasks"]}
    assert statuses == {
        "train": "succeeded",
        "evaluate": "rejected",
        "register": "skipped",
        "package": "skipped",
    }
    assert "accuracy" in done["error"]
    assert api.get("/api/v1/models/churn").status_code == 404


def test_must_beat_the_champion(api: TestClient, jobs: InlineJobs) -> None:
    upload_churn(api)
    spec = ci_spec(entrypoint=False)
    spec["tasks"][2]["params"]["alias"] = "champion"
    create(api, "ci", spec)
    first = api.post("/api/v1/pipelines/ci/runs", json={}).json()
    jobs.run()
    assert api.get(f"/api/v1/pipeline-runs/{first['id']}").json()["status"] == "succeeded"
    assert api.get("/api/v1/models/churn").json()["aliases"] == {"champion": 1}
    # the same training again cannot beat the champion by a positive tolerance
    spec["tasks"][1]["params"]["tolerance"] = 0.05
    api.patch("/api/v1/pipelines/ci", json={"spec": spec})
    second = api.post("/api/v1/pipelines/ci/runs", json={}).json()
    jobs.run()
    done = api.get(f"/api/v1/pipeline-runs/{second['id']}").json()
    assert done["status"] == "rejected"
    evaluate = next(t for t in done["tasks"] if t["name"] == "evaluate")
    assert evaluate["outputs"]["champion_version"] == 1
    assert evaluate["outputs"]["champion_metrics"]


@pytest.mark.slow  # many task subprocesses: run in the Postgres pass, not again on SQLite
def test_repo_entrypoint_and_cache(api: TestClient, jobs: InlineJobs, tmp_path: Path) -> None:
    upload_churn(api)
    repo, commit = make_repo(tmp_path)
    spec = ci_spec()
    spec["tasks"][0]["cache"] = True
    create(api, "ci", spec)
    source = api.post(
        "/api/v1/sources/git",
        json={"name": "repo", "repo_url": f"file://{repo}", "pipeline": "ci"},
    )
    assert source.status_code == 201, source.text
    first = api.post("/api/v1/pipelines/ci/runs", json={"source": "repo", "commit": commit}).json()
    jobs.run()
    done = api.get(f"/api/v1/pipeline-runs/{first['id']}").json()
    assert done["status"] == "succeeded", done
    train = done["tasks"][0]
    assert train["outputs"]["commit"] == commit
    run = api.get(f"/api/v1/runs/{train['outputs']['run_id']}").json()
    assert run["params"]["C"] == "0.5" and run["code_version"]["commit"] == commit

    again = api.post("/api/v1/pipelines/ci/runs", json={"source": "repo", "commit": commit}).json()
    jobs.run()
    cached = api.get(f"/api/v1/pipeline-runs/{again['id']}").json()["tasks"][0]
    assert cached["cached_from_task_run_id"] is not None and cached["outputs"]["cached"] is True

    (repo / "churn_model.py").write_text((repo / "churn_model.py").read_text() + "\n# tweak\n")
    git(repo, "commit", "-qam", "tweak")
    newer = git(repo, "rev-parse", "HEAD")
    third = api.post("/api/v1/pipelines/ci/runs", json={"source": "repo", "commit": newer}).json()
    jobs.run()
    fresh = api.get(f"/api/v1/pipeline-runs/{third['id']}").json()["tasks"][0]
    assert fresh["cached_from_task_run_id"] is None  # a new commit is a new cache key
    upload_churn(api, seed=99)  # new data: a new digest, so no cache hit either
    fourth = api.post("/api/v1/pipelines/ci/runs", json={"source": "repo", "commit": newer}).json()
    jobs.run()
    assert (
        api.get(f"/api/v1/pipeline-runs/{fourth['id']}").json()["tasks"][0][
            "cached_from_task_run_id"
        ]
        is None
    )


def test_failure_retries_with_backoff_then_fails_downstream(
    api: TestClient, jobs: InlineJobs
) -> None:
    spec = ci_spec(entrypoint=False)
    spec["tasks"][0]["params"]["target"] = "no_such_column"
    spec["tasks"][0]["retries"] = 1
    spec["tasks"][0]["retry_backoff_seconds"] = 0.1
    create(api, "broken", spec)  # before the data exists, so the target is judged at run time
    upload_churn(api)
    run = api.post("/api/v1/pipelines/broken/runs", json={}).json()
    jobs.run()
    done = api.get(f"/api/v1/pipeline-runs/{run['id']}").json()
    assert done["status"] == "failed"
    train = done["tasks"][0]
    assert train["status"] == "failed" and train["attempts"] == 2
    assert "no_such_column" in train["error"]
    assert [t["status"] for t in done["tasks"][1:]] == ["upstream_failed"] * 3


def test_independent_tasks_are_queued_together(api: TestClient, jobs: InlineJobs) -> None:
    from app.core.jobs import run_job

    upload_churn(api)
    train = ci_spec(entrypoint=False)["tasks"][0]
    spec = {"tasks": [dict(train, name="a"), dict(train, name="b")]}
    create(api, "fanout", spec)
    run = api.post("/api/v1/pipelines/fanout/runs", json={}).json()
    advance = jobs.queue.pop(0)
    run_job(jobs.ctx, advance.task, advance.payload)
    state = api.get(f"/api/v1/pipeline-runs/{run['id']}").json()
    assert [t["status"] for t in state["tasks"]] == ["queued", "queued"]
    assert [m.task for m in jobs.queue] == ["pipelines.execute_task"] * 2


def test_task_timeout_stops_the_subprocess(
    api: TestClient, jobs: InlineJobs, tmp_path: Path
) -> None:
    repo, _ = make_repo(tmp_path)
    (repo / "slow.py").write_text(
        "import time\n\n\ndef run(workdir, **kwargs):\n    time.sleep(60)\n"
    )
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "slow")
    spec = {
        "tasks": [
            {"name": "slow", "type": "python", "params": {"function": "slow:run"}, "timeout": 2}
        ]
    }
    create(api, "slow", spec)
    api.post(
        "/api/v1/sources/git",
        json={"name": "repo", "repo_url": f"file://{repo}", "pipeline": "slow"},
    )
    run = api.post("/api/v1/pipelines/slow/runs", json={"source": "repo", "branch": "main"}).json()
    jobs.run()
    done = api.get(f"/api/v1/pipeline-runs/{run['id']}").json()
    assert done["status"] == "failed"
    assert done["tasks"][0]["error"] == "timed out after 2 s"
    assert done["tasks"][0]["duration_ms"] < 15_000


def test_sweep_requeues_lost_tasks_and_fails_them_past_their_timeout(
    api: TestClient, jobs: InlineJobs, session
) -> None:
    from datetime import timedelta

    from app.core.db import utcnow
    from app.core.jobs import run_job
    from app.pipelines.housekeeping import SWEEP_JOB
    from app.pipelines.models import TaskRun, TaskStatus

    upload_churn(api)
    create(api, "lost", ci_spec(entrypoint=False))
    run = api.post("/api/v1/pipelines/lost/runs", json={}).json()
    jobs.queue.clear()
    task = session.query(TaskRun).filter_by(pipeline_run_id=run["id"], name="train").one()
    task.status, task.worker = TaskStatus.running, "gone:1"
    task.started_at = task.heartbeat_at = utcnow() - timedelta(minutes=2)
    session.commit()
    run_job(jobs.ctx, SWEEP_JOB, {})
    session.refresh(task)
    assert task.status == TaskStatus.queued and "stopped heartbeating" in task.error
    task.status = TaskStatus.running
    task.started_at = task.heartbeat_at = utcnow() - timedelta(hours=2)  # past its 300 s timeout
    session.commit()
    jobs.queue.clear()
    run_job(jobs.ctx, SWEEP_JOB, {})
    jobs.run()
    done = api.get(f"/api/v1/pipeline-runs/{run['id']}").json()
    assert done["status"] == "failed"
    assert "timed out after 300 s" in done["tasks"][0]["error"]
    assert [t["status"] for t in done["tasks"][1:]] == ["upstream_failed"] * 3


@pytest.mark.slow  # many task subprocesses: run in the Postgres pass, not again on SQLite
def test_deploy_task_serves_the_blessed_version_in_staging_then_canaries_the_next(
    api: TestClient, jobs: InlineJobs
) -> None:
    upload_churn(api)
    spec = ci_spec(entrypoint=False, deploy="churn-staging")
    create(api, "ci", spec)
    first = api.post("/api/v1/pipelines/ci/runs", json={}).json()
    jobs.run()
    done = api.get(f"/api/v1/pipeline-runs/{first['id']}").json()
    assert done["status"] == "succeeded", done
    deploy = next(t for t in done["tasks"] if t["name"] == "deploy")
    assert deploy["outputs"] == {
        "deployment": "churn-staging",
        "model": "churn/1",
        "strategy": "direct",
        "rollout_id": None,
    }
    deployment = api.get("/api/v1/deployments/churn-staging").json()
    assert deployment["environment"] == "staging"
    assert [(v["name"], v["model_version"], v["weight"]) for v in deployment["variants"]] == [
        ("v1", 1, 100)
    ]

    spec["tasks"][-1]["params"]["strategy"] = "canary"
    assert api.patch("/api/v1/pipelines/ci", json={"spec": spec}).status_code == 200
    second = api.post(
        "/api/v1/pipelines/ci/runs", json={"params": {"hyperparameters": {"C": 0.3}}}
    ).json()
    jobs.run()
    done = api.get(f"/api/v1/pipeline-runs/{second['id']}").json()
    assert done["status"] == "succeeded", done
    deploy = next(t for t in done["tasks"] if t["name"] == "deploy")
    assert deploy["outputs"]["strategy"] == "canary" and deploy["outputs"]["rollout_id"]
    rollout = api.get(
        f"/api/v1/deployments/churn-staging/rollouts/{deploy['outputs']['rollout_id']}"
    ).json()
    assert rollout["state"] == "running" and rollout["candidate_model"] == "churn/2"
    weights = {
        v["name"]: v["weight"]
        for v in api.get("/api/v1/deployments/churn-staging").json()["variants"]
    }
    assert weights == {"v1": 90, "v2": 10}
