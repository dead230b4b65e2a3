"""The production shape: API process, Celery worker process, Redis broker, Postgres."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.auth import service as auth_service
from app.core.db import create_db_engine, create_session_factory, unit_of_work
from app.core.migrate import upgrade
from app.core.security import Role
from tests.dbutil import scratch_postgres
from tests.e2e.ci_flow import run_ci_flow
from tests.e2e.services import redis_url, require_redis, service_env, start_api, start_worker
from tests.e2e.test_embedded import wait_for
from tests.registry.helpers import churn_frame, csv_bytes, fit_pipeline, skops_bytes

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(database_url: str, requires_postgres: None, tmp_path: Path) -> Iterator[tuple[str, str]]:
    broker = redis_url(7)
    require_redis(broker)
    with scratch_postgres(database_url, prefix="flywheel_e2e") as url:
        upgrade(url)
        engine = create_db_engine(url)
        with unit_of_work(create_session_factory(engine)) as session:
            _, token = auth_service.create_token(session, name="e2e", role=Role.admin)
        engine.dispose()
        env = service_env(url, broker, tmp_path / "home")
        api, base = start_api(env, tmp_path)
        worker = start_worker(env, tmp_path, "w1", "-P", "prefork", "-c", "2")
        try:
            yield base, token
        finally:
            worker.stop()
            api.stop()


def test_worker_process_finalizes_and_packages_over_redis(
    stack: tuple[str, str], tmp_path: Path
) -> None:
    base, token = stack
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
        http.put(
            f"/api/v1/runs/{run['id']}/artifacts/model.skops",
            content=skops_bytes(fit_pipeline(frame), tmp_path),
        ).raise_for_status()
        http.post("/api/v1/models", json={"name": "churn"}).raise_for_status()
        body = {
            "run_id": run["id"],
            "artifact_path": "model.skops",
            "dataset_version_id": dataset["id"],
            "target": "churned",
        }
        assert http.post("/api/v1/models/churn/versions", json=body).status_code == 202
        version = wait_for(http, "/api/v1/models/churn/versions/1", "status", "pending")
        assert version["status"] == "ready", version
        http.post("/api/v1/models/churn/versions/1/package").raise_for_status()
        packaged = wait_for(http, "/api/v1/models/churn/versions/1", "package_status", "pending")
        assert packaged["package_status"] == "ready", packaged


def test_git_push_trains_evaluates_registers_and_packages(
    stack: tuple[str, str], tmp_path: Path
) -> None:
    base, token = stack
    run_ci_flow(base, token, tmp_path)
