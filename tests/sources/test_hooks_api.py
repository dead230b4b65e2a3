"""Inbound webhooks through the API: signatures, dedupe, branch filters, data ingest."""

import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import InlineJobs
from tests.e2e.ci_flow import github_push
from tests.pipelines.helpers import ci_spec, make_repo, upload_churn
from tests.registry.helpers import churn_frame, csv_bytes


@pytest.fixture
def git_source(api: TestClient, tmp_path: Path) -> dict:
    api.post("/api/v1/pipelines", json={"name": "ci", "spec": ci_spec()})
    repo, commit = make_repo(tmp_path)
    created = api.post(
        "/api/v1/sources/git",
        json={"name": "repo", "repo_url": f"file://{repo}", "branch": "main", "pipeline": "ci"},
    )
    assert created.status_code == 201, created.text
    return {**created.json(), "commit": commit, "url": f"file://{repo}"}


def test_git_source_secret_shown_once_and_admin_only(
    api: TestClient, git_source: dict, client, auth
) -> None:
    from app.core.security import Role

    assert len(git_source["secret"]) >= 32
    listed = api.get("/api/v1/sources/git").json()["items"]
    assert listed[0]["hook_path"] == "/api/v1/hooks/git/repo" and "secret" not in listed[0]
    assert client.get("/api/v1/sources/git", headers=auth(Role.deployer)).status_code == 403


@pytest.mark.parametrize(
    "url", ["ext::sh -c touch% /tmp/x", "http://example.com/r.git", "/abs/path", "-oProxyCommand=x"]
)
def test_unsafe_repo_urls_are_refused(api: TestClient, url: str) -> None:
    api.post("/api/v1/pipelines", json={"name": "ci", "spec": ci_spec()})
    response = api.post(
        "/api/v1/sources/git", json={"name": "r", "repo_url": url, "pipeline": "ci"}
    )
    assert response.status_code == 422


def test_github_push_forged_replayed_other_branch(
    client: TestClient, git_source: dict, api: TestClient
) -> None:
    hook = git_source["hook_path"]
    headers, body = github_push(
        git_source["secret"], git_source["url"], git_source["commit"], delivery="d-1"
    )
    forged = dict(headers, **{"X-Hub-Signature-256": "sha256=" + "0" * 64})
    response = client.post(hook, content=body, headers=forged)
    assert response.status_code == 401
    missing = {k: v for k, v in headers.items() if k != "X-Hub-Signature-256"}
    assert client.post(hook, content=body, headers=missing).status_code == 401
    assert api.get("/api/v1/pipeline-runs").json()["items"] == []  # nothing created

    accepted = client.post(hook, content=body, headers=headers)
    assert accepted.status_code == 202 and accepted.json()["status"] == "accepted"
    replay = client.post(hook, content=body, headers=headers)
    assert replay.status_code == 200 and replay.json()["status"] == "duplicate"
    assert len(api.get("/api/v1/pipeline-runs").json()["items"]) == 1
    run = api.get("/api/v1/pipeline-runs").json()["items"][0]
    assert (
        run["commit"] == git_source["commit"]
        and run["trigger"] == "git"
        and run["branch"] == "main"
    )

    other_headers, other_body = github_push(
        git_source["secret"], git_source["url"], git_source["commit"], branch="dev"
    )
    ignored = client.post(hook, content=other_body, headers=other_headers)
    assert ignored.status_code == 200 and "does not match" in ignored.json()["reason"]


def test_malformed_and_unknown_hooks(client: TestClient, git_source: dict) -> None:
    hook = git_source["hook_path"]
    secret = git_source["secret"].encode()
    body = b"{not json"
    signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "x", "X-Hub-Signature-256": signature}
    assert client.post(hook, content=body, headers=headers).status_code == 400
    assert client.post(hook, content=b"{}", headers={"X-Other": "1"}).status_code == 400
    assert client.post("/api/v1/hooks/git/nope", content=b"{}").status_code == 404


def test_gitlab_push(client: TestClient, git_source: dict, api: TestClient) -> None:
    body = json.dumps(
        {
            "object_kind": "push",
            "ref": "refs/heads/main",
            "after": git_source["commit"],
            "checkout_sha": git_source["commit"],
            "project": {"git_http_url": git_source["url"]},
            "user_username": "ml",
        }
    ).encode()
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": "g-1"}
    assert (
        client.post(
            git_source["hook_path"], content=body, headers={**headers, "X-Gitlab-Token": "wrong"}
        ).status_code
        == 401
    )
    ok = client.post(
        git_source["hook_path"],
        content=body,
        headers={**headers, "X-Gitlab-Token": git_source["secret"]},
    )
    assert ok.status_code == 202, ok.text


@pytest.fixture
def data_source(api: TestClient, settings, tmp_path: Path) -> dict:
    upload_churn(api)
    api.post("/api/v1/pipelines", json={"name": "retrain", "spec": ci_spec(entrypoint=False)})
    created = api.post(
        "/api/v1/sources/data", json={"name": "landing", "dataset": "churn", "pipeline": "retrain"}
    )
    assert created.status_code == 201, created.text
    return created.json()


def s3_event(bucket: str, key: str, etag: str = "abc", sequencer: str = "0001") -> bytes:
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": key, "size": 10, "eTag": etag, "sequencer": sequencer},
        },
    }
    return json.dumps({"Records": [record]}).encode()


def test_s3_event_registers_a_dataset_version_and_triggers_the_pipeline(
    client: TestClient,
    api: TestClient,
    data_source: dict,
    jobs: InlineJobs,
    settings,
    tmp_path: Path,
) -> None:
    root = tmp_path / "buckets"
    (root / "landing" / "day 2").mkdir(parents=True)
    (root / "landing" / "day 2" / "churn é.csv").write_bytes(
        csv_bytes(churn_frame(rows=300, seed=11))
    )
    jobs.ctx = type(jobs.ctx)(
        settings.model_copy(update={"object_store_root": root}),
        jobs.ctx.artifacts,
        jobs.ctx.session_factory,
        jobs.ctx.publish,
    )
    body = s3_event("landing", "day+2/churn+%C3%A9.csv")
    bearer = {"Authorization": f"Bearer {data_source['secret']}"}
    assert (
        client.post(
            data_source["hook_path"], content=body, headers={"Authorization": "Bearer nope"}
        ).status_code
        == 401
    )
    accepted = client.post(data_source["hook_path"], content=body, headers=bearer)
    assert accepted.status_code == 202, accepted.text
    assert (
        client.post(data_source["hook_path"], content=body, headers=bearer).json()["status"]
        == "duplicate"
    )
    jobs.run()
    versions = api.get("/api/v1/datasets/churn/versions").json()["items"]
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[1]["source_uri"] == "s3://landing/day 2/churn é.csv"
    runs = api.get("/api/v1/pipeline-runs?pipeline=retrain").json()["items"]
    assert len(runs) == 1 and runs[0]["trigger"] == "data"
    assert runs[0]["dataset_version_id"] == versions[1]["id"] and runs[0]["status"] == "succeeded"


def test_generic_signed_json(
    client: TestClient, data_source: dict, jobs: InlineJobs, settings, api: TestClient
) -> None:
    landing = settings.resolved_artifact_root / "landing"
    landing.mkdir(parents=True)
    (landing / "drop.csv").write_bytes(csv_bytes(churn_frame(rows=200, seed=3)))
    body = json.dumps({"uri": "landing/drop.csv", "delivery_id": "drop-1"}).encode()
    stamp = str(int(time.time()))
    signature = (
        "sha256="
        + hmac.new(
            data_source["secret"].encode(), f"{stamp}.".encode() + body, hashlib.sha256
        ).hexdigest()
    )
    headers = {"X-Flywheel-Signature": signature, "X-Flywheel-Timestamp": stamp}
    stale = {
        "X-Flywheel-Signature": signature,
        "X-Flywheel-Timestamp": str(int(time.time()) - 3600),
    }
    assert client.post(data_source["hook_path"], content=body, headers=stale).status_code == 401
    assert client.post(data_source["hook_path"], content=body, headers=headers).status_code == 202
    jobs.run()
    assert len(api.get("/api/v1/datasets/churn/versions").json()["items"]) == 2


def test_malformed_object_event_is_400(client: TestClient, data_source: dict) -> None:
    bearer = {"Authorization": f"Bearer {data_source['secret']}"}
    response = client.post(
        data_source["hook_path"], content=b'{"Records": [{"s3": {}}]}', headers=bearer
    )
    assert response.status_code == 400
    test_event = json.dumps({"Event": "s3:TestEvent", "Service": "Amazon S3"}).encode()
    assert (
        client.post(data_source["hook_path"], content=test_event, headers=bearer).json()["status"]
        == "ignored"
    )
