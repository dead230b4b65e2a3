"""A committed database with ready versions, a 90/10 deployment and a live gateway whose
replicas are real processes: what the serving tests run against."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.artifacts import ArtifactStore
from app.core.config import Settings
from app.core.db import create_db_engine, create_session_factory
from app.core.jobs import JobContext
from app.core.migrate import upgrade
from app.core.security import Role
from app.main import create_app
from app.serving.gateway import create_gateway
from tests.conftest import InlineJobs
from tests.dbutil import is_postgres_url, scratch_postgres
from tests.live import live_server
from tests.registry.helpers import FEATURES, Registry, churn_frame, fit_pipeline


@pytest.fixture
def stack(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """A committed database with two ready versions and a 90/10 deployment, and a gateway."""
    if is_postgres_url(database_url):
        context = scratch_postgres(database_url, prefix="flywheel_gateway")
    else:
        from contextlib import nullcontext

        context = nullcontext(f"sqlite:///{tmp_path / 'gateway.db'}")
    with context as url:
        upgrade(url)
        settings = Settings(
            home=tmp_path / "home",
            database_url=url,
            artifact_root=tmp_path / "artifacts",
            secret_key="serving-tests",
            webhook_allowed_hosts=["127.0.0.1"],  # the tests' webhook receiver runs here
            webhook_backoff_seconds=0.05,
        )
        monkeypatch.setenv("FLYWHEEL_DATABASE_URL", url)  # replicas read these
        monkeypatch.setenv("FLYWHEEL_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
        engine = create_db_engine(url)
        factory = create_session_factory(engine)
        store = ArtifactStore(settings.resolved_artifact_root)
        jobs = InlineJobs(JobContext(settings, store, factory))
        from app.auth import service as auth_service
        from app.core.db import unit_of_work

        with unit_of_work(factory) as session:
            _, token = auth_service.create_token(session, name="t", role=Role.admin)
        api = TestClient(create_app(settings, session_factory=factory, publish=jobs.publish))
        api.headers["Authorization"] = f"Bearer {token}"
        frame = churn_frame()
        registry = Registry(api, tmp_path)
        dataset = registry.dataset_version(frame)
        blue, green = fit_pipeline(frame), fit_pipeline(churn_frame(seed=5))
        registry.register("churn", blue, dataset["id"])
        registry.register("churn", green, dataset["id"])
        # version 3 raises on a city it never saw, as a buggy model would
        registry.register("churn", fit_pipeline(frame, lenient=False), dataset["id"])
        jobs.run()
        created = api.post(
            "/api/v1/deployments",
            json={
                "name": "churn",
                "variants": [
                    {"name": "blue", "model": "churn/1", "weight": 90},
                    {"name": "green", "model": "churn/2", "weight": 10},
                ],
                "autoscaling": {"min_replicas": 1, "max_replicas": 2},
                "unit_key": "x-user-id",
            },
        )
        assert created.status_code == 201, created.text
        gateway_app = create_gateway(settings, factory, interval=0.5)
        with live_server(gateway_app) as base:
            wait_ready(base, gateway_app)
            yield {
                "base": base,
                "auth": {"Authorization": f"Bearer {token}"},
                "blue": blue,
                "green": green,
                "frame": frame,
                "app": gateway_app,
                "api": api,
                "jobs": jobs,
                "factory": factory,
                "registry": registry,
                "dataset": dataset,
            }
        engine.dispose()


def wait_ready(base: str, app: Any, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        served = app.state.gateway.served.get("churn")
        if (
            served
            and all(r.ready for lane in served.lanes for r in lane.replicas)
            and all(lane.replicas for lane in served.lanes)
        ):
            return
        time.sleep(0.1)
    raise AssertionError("replicas did not become ready")


def rows(frame: Any, n: int = 5) -> list[dict[str, Any]]:
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
        for r in frame[FEATURES].head(n).to_dict("records")
    ]


def wait_for(condition: Any, timeout: float = 180, message: str = "condition not met") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)
