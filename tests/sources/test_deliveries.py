"""Every inbound delivery and its outcome through the API, failures after the 202 included."""

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.security import Role
from app.events.models import Event
from tests.conftest import InlineJobs
from tests.datasets.files import constant_parquet, stored_files
from tests.e2e.ci_flow import github_push
from tests.pipelines.helpers import ci_spec, make_repo, upload_churn
from tests.registry.helpers import churn_frame, csv_bytes
from tests.sources.test_hooks_api import s3_event


@pytest.fixture
def landing(api: TestClient) -> dict[str, Any]:
    """A data source without a pipeline: ingest is the whole story."""
    upload_churn(api)
    created = api.post("/api/v1/sources/data", json={"name": "landing", "dataset": "churn"})
    assert created.status_code == 201, created.text
    return dict(created.json())


def _mirror(jobs: InlineJobs, settings: Any, root: Path) -> None:
    """Workers that read s3:// objects from `root`, as FLYWHEEL_OBJECT_STORE_ROOT says."""
    jobs.ctx = type(jobs.ctx)(
        settings.model_copy(update={"object_store_root": root}),
        jobs.ctx.artifacts,
        jobs.ctx.session_factory,
        jobs.ctx.publish,
    )


def _deliveries(client: TestClient, auth: Any, path: str, **params: Any) -> dict[str, Any]:
    response = client.get(path, params=params, headers=auth(Role.viewer))
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_failed_ingest_is_listed_with_its_reason_logged_and_an_event(
    client: TestClient,
    auth: Any,
    landing: dict[str, Any],
    jobs: InlineJobs,
    session: Session,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The hook answers 202 "queued for ingest"; the worker has no object-store root."""
    bearer = {"Authorization": f"Bearer {landing['secret']}"}
    hook = client.post(landing["hook_path"], content=s3_event("bucket", "day1.csv"), headers=bearer)
    assert hook.status_code == 202 and "queued for ingest" in hook.json()["reason"]
    path = "/api/v1/sources/data/landing/deliveries"
    queued = _deliveries(client, auth, path)["items"]
    assert [(d["outcome"], d["settled_at"]) for d in queued] == [("accepted", None)]

    with caplog.at_level(logging.WARNING, logger="app.sources.jobs"):
        jobs.run()
    [failed] = _deliveries(client, auth, path)["items"]
    assert failed["outcome"] == "failed"
    assert "FLYWHEEL_OBJECT_STORE_ROOT" in failed["message"]
    assert failed["event"] == "ObjectCreated:Put"
    assert failed["object_uri"] == "s3://bucket/day1.csv"
    assert failed["delivery_id"].startswith("bucket/day1.csv@abc")
    assert failed["settled_at"] is not None and failed["received_at"] <= failed["settled_at"]
    assert failed["pipeline_run_id"] is None and failed["dataset_version_id"] is None
    assert landing["secret"] not in json.dumps(failed)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("FLYWHEEL_OBJECT_STORE_ROOT" in r.getMessage() for r in warnings)
    event = session.scalars(select(Event).where(Event.type == "data_source.ingest_failed")).one()
    assert event.subject == "data_source:landing"
    assert "FLYWHEEL_OBJECT_STORE_ROOT" in event.payload["reason"]


def test_a_compressed_bomb_from_a_data_webhook_fails_on_the_same_bounds(
    client: TestClient,
    auth: Any,
    landing: dict[str, Any],
    jobs: InlineJobs,
    settings: Any,
    tmp_path: Path,
) -> None:
    root = tmp_path / "buckets"
    (root / "bucket").mkdir(parents=True)
    (root / "bucket" / "bomb.parquet").write_bytes(constant_parquet(5_000_000))
    (root / "bucket" / "good.csv").write_bytes(csv_bytes(churn_frame(rows=50, seed=4)))
    _mirror(jobs, settings, root)
    bearer = {"Authorization": f"Bearer {landing['secret']}"}
    before = stored_files(settings.resolved_artifact_root)
    for key, sequencer in (("bomb.parquet", "01"), ("good.csv", "02")):
        body = s3_event("bucket", key, sequencer=sequencer)
        assert client.post(landing["hook_path"], content=body, headers=bearer).status_code == 202
    jobs.run()
    good, bomb = _deliveries(client, auth, "/api/v1/sources/data/landing/deliveries")["items"]
    assert bomb["outcome"] == "failed" and "5,000,000 rows" in bomb["message"]
    assert "FLYWHEEL_MAX_DATASET_ROWS" in bomb["message"]
    assert good["outcome"] == "ingested" and "churn v2" in good["message"]
    version = client.get("/api/v1/datasets/churn/versions/2", headers=auth(Role.viewer)).json()
    assert good["dataset_version_id"] == version["id"]
    after = stored_files(settings.resolved_artifact_root)
    assert len(after) == len(before) + 1  # the good file only


def test_git_deliveries_newest_first_paged_with_their_runs(
    client: TestClient, api: TestClient, auth: Any, tmp_path: Path
) -> None:
    api.post("/api/v1/pipelines", json={"name": "ci", "spec": ci_spec()})
    repo, commit = make_repo(tmp_path)
    source = api.post(
        "/api/v1/sources/git",
        json={"name": "repo", "repo_url": f"file://{repo}", "branch": "main", "pipeline": "ci"},
    ).json()
    for delivery, branch in (("d-1", "main"), ("d-2", "dev"), ("d-3", "main")):
        headers, body = github_push(
            source["secret"], f"file://{repo}", commit, delivery=delivery, branch=branch
        )
        assert client.post(source["hook_path"], content=body, headers=headers).status_code in (
            200,
            202,
        )
    path = "/api/v1/sources/git/repo/deliveries"
    first = _deliveries(client, auth, path, page_size=2)
    assert [d["delivery_id"] for d in first["items"]] == ["d-3", "d-2"]
    rest = _deliveries(client, auth, path, page_size=2, page_token=first["next_page_token"])
    assert [d["delivery_id"] for d in rest["items"]] == ["d-1"] and rest["next_page_token"] is None
    newest, ignored = first["items"]
    runs = api.get("/api/v1/pipeline-runs").json()["items"]
    assert newest["outcome"] == "accepted" and newest["pipeline_run_id"] in [r["id"] for r in runs]
    assert newest["event"] == "push" and newest["settled_at"] is not None
    assert ignored["outcome"] == "ignored" and "'dev'" in ignored["message"]
    assert ignored["pipeline_run_id"] is None
    assert source["secret"] not in json.dumps(first)
    missing = client.get("/api/v1/sources/git/none/deliveries", headers=auth(Role.viewer))
    assert missing.status_code == 404
