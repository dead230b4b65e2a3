"""The CI loop end to end over real HTTP: a git push webhook trains, evaluates, registers and
packages a model. Shared by the production-shaped stack and embedded mode."""

import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.pipelines.helpers import ci_spec, make_repo
from tests.registry.helpers import churn_frame, csv_bytes


def github_push(
    secret: str, repo_url: str, commit: str, *, delivery: str | None = None, branch: str = "main"
) -> tuple[dict[str, str], bytes]:
    body = json.dumps(
        {
            "ref": f"refs/heads/{branch}",
            "before": "0" * 40,
            "after": commit,
            "repository": {"clone_url": repo_url, "full_name": "acme/churn"},
            "pusher": {"name": "ml-engineer"},
            "head_commit": {"id": commit, "message": "churn model"},
        }
    ).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": signature,
        "Content-Type": "application/json",
    }
    return headers, body


def wait_run(http: httpx.Client, run_id: int, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = http.get(f"/api/v1/pipeline-runs/{run_id}").json()
        if run["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return run
        time.sleep(0.3)


def run_ci_flow(base: str, token: str, tmp_path: Path, gateway: str | None = None) -> None:
    """A git push trains, evaluates, registers, packages and deploys to staging; with a
    gateway running, the staging deployment then serves predictions."""
    repo, commit = make_repo(tmp_path)
    repo_url = f"file://{repo}"
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        http.post("/api/v1/datasets", json={"name": "churn"}).raise_for_status()
        dataset = http.post(
            "/api/v1/datasets/churn/versions",
            files={"file": ("churn.csv", csv_bytes(churn_frame(rows=400)))},
        ).json()
        http.post(
            "/api/v1/pipelines",
            json={"name": "churn-ci", "spec": ci_spec(deploy="churn-staging")},
        ).raise_for_status()
        source = http.post(
            "/api/v1/sources/git",
            json={
                "name": "churn-repo",
                "repo_url": repo_url,
                "branch": "main",
                "pipeline": "churn-ci",
            },
        )
        assert source.status_code == 201, source.text
        secret = source.json()["secret"]
        hook = source.json()["hook_path"]

    with httpx.Client(base_url=base, timeout=60) as anonymous:
        forged_headers, body = github_push("not-the-secret-at-all", repo_url, commit)
        assert anonymous.post(hook, content=body, headers=forged_headers).status_code == 401
        push_headers, body = github_push(secret, repo_url, commit)
        accepted = anonymous.post(hook, content=body, headers=push_headers)
        assert accepted.status_code == 202, accepted.text
        [run_id] = accepted.json()["pipeline_run_ids"]
        replay = anonymous.post(hook, content=body, headers=push_headers)
        assert replay.status_code == 200 and replay.json()["status"] == "duplicate"
        other_headers, other_body = github_push(secret, repo_url, commit, branch="feature/x")
        ignored = anonymous.post(hook, content=other_body, headers=other_headers)
        assert ignored.status_code == 200 and ignored.json()["status"] == "ignored"

    with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        run = wait_run(http, run_id)
        assert run["status"] == "succeeded", json.dumps(run, indent=1)
        assert run["commit"] == commit and run["trigger"] == "git"
        tasks = {t["name"]: t for t in run["tasks"]}
        assert tasks["evaluate"]["outputs"]["verdict"] == "blessed"
        version = http.get("/api/v1/models/churn/versions/latest").json()
        assert version["status"] == "ready" and version["package_status"] == "ready"
        assert version["package"]["image"]["status"] == "skipped"
        tracked = http.get(f"/api/v1/runs/{version['run_id']}").json()
        assert tracked["code_version"]["commit"] == commit
        assert tracked["code_version"]["repo"] == repo_url
        assert tracked["params"]["C"] == "0.5"  # from flywheel.yaml
        assert tracked["metrics"]["holdout_accuracy"] > 0.6
        assert (
            tracked["status"] == "finished"
            and tracked["duration_ms"] >= 0
            and tracked["start_time"]
        )
        assert tracked["inputs"] == [{"dataset_version_id": dataset["id"], "context": "training"}]
        lineage = http.get(f"/api/v1/models/churn/versions/{version['version']}/lineage").json()
        digests = [n["data"]["digest"] for n in lineage["nodes"] if n["type"] == "dataset_version"]
        assert digests == [dataset["digest"]]
        log = http.get(f"/api/v1/pipeline-runs/{run_id}/tasks/train/logs").json()
        assert "fitting on" in log["text"] and log["complete"] is True
        runs = http.get("/api/v1/pipeline-runs?pipeline=churn-ci").json()["items"]
        assert len(runs) == 1
        staging = http.get("/api/v1/deployments/churn-staging").json()
        assert staging["environment"] == "staging"
        assert [v["model_version"] for v in staging["variants"]] == [version["version"]]
    if gateway is not None:
        row = churn_frame(rows=1).drop(columns=["churned"]).to_dict("records")[0]
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        deadline = time.monotonic() + 90
        while True:
            answer = httpx.post(
                f"{gateway}/serve/churn-staging/predict",
                json={"rows": [row]},
                headers=headers,
                timeout=60,
            )
            if answer.status_code == 200:
                break
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.5)
        assert answer.json()["model_version"] == version["version"]


def wait_for(
    http: httpx.Client, path: str, field: str, while_value: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = http.get(path).json()
        if body[field] != while_value or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def run_registry_flow(base: str, token: str, tmp_path: Path) -> None:
    """Register a run's model and package it; the workers (wherever they run) finish both."""
    from tests.registry.helpers import fit_pipeline, skops_bytes

    frame = churn_frame()
    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        http.post("/api/v1/datasets", json={"name": "churn"})
        dataset = http.post(
            "/api/v1/datasets/churn/versions", files={"file": ("c.csv", csv_bytes(frame))}
        ).json()
        exp = http.post("/api/v1/experiments", json={"name": "e"}).json()
        run = http.post("/api/v1/runs", json={"experiment_id": exp["id"]}).json()
        model = skops_bytes(fit_pipeline(frame), tmp_path)
        http.put(
            f"/api/v1/runs/{run['id']}/artifacts/model.skops", content=model
        ).raise_for_status()
        http.post("/api/v1/models", json={"name": "churn"}).raise_for_status()
        body = {
            "run_id": run["id"],
            "artifact_path": "model.skops",
            "dataset_version_id": dataset["id"],
            "target": "churned",
        }
        created = http.post("/api/v1/models/churn/versions", json=body)
        assert created.status_code == 202, created.text
        version = wait_for(http, "/api/v1/models/churn/versions/1", "status", "pending")
        assert version["status"] == "ready", version
        http.post("/api/v1/models/churn/versions/1/package").raise_for_status()
        packaged = wait_for(http, "/api/v1/models/churn/versions/1", "package_status", "pending")
        assert packaged["package_status"] == "ready", packaged
