"""Two concurrent creates never get the same number: real commits, parallel HTTP, Postgres."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.auth import service as auth_service
from app.core.config import Settings
from app.core.db import create_db_engine, create_session_factory, unit_of_work
from app.core.migrate import upgrade
from app.core.outbox import OutboxMessage
from app.core.security import Role
from app.main import create_app
from tests.dbutil import scratch_postgres
from tests.live import live_server
from tests.registry.helpers import churn_frame, fit_pipeline, skops_bytes

PARALLEL = 12


@pytest.fixture
def committed_server(
    database_url: str, tmp_path: Path, requires_postgres: None
) -> Iterator[tuple[str, str]]:
    with scratch_postgres(database_url, prefix="flywheel_concurrency") as url:
        upgrade(url)
        engine = create_db_engine(url)
        factory = create_session_factory(engine)
        with unit_of_work(factory) as session:
            _, token = auth_service.create_token(session, name="t", role=Role.admin)
        published: list[OutboxMessage] = []
        settings = Settings(home=tmp_path, database_url=url, artifact_root=tmp_path / "artifacts")
        app = create_app(settings, session_factory=factory, publish=published.append)
        try:
            with live_server(app) as base:
                yield base, token
        finally:
            engine.dispose()


def test_parallel_version_creates_get_distinct_numbers(
    committed_server: tuple[str, str], tmp_path: Path
) -> None:
    base, token = committed_server
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        http.post("/api/v1/models", json={"name": "race"}).raise_for_status()
        experiment = http.post("/api/v1/experiments", json={"name": "e"}).json()
        run = http.post("/api/v1/runs", json={"experiment_id": experiment["id"]}).json()
        content = skops_bytes(fit_pipeline(churn_frame()), tmp_path)
        http.put(
            f"/api/v1/runs/{run['id']}/artifacts/model.skops", content=content
        ).raise_for_status()

    def create(_: int) -> int:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            response = client.post(
                "/api/v1/models/race/versions",
                json={"run_id": run["id"], "artifact_path": "model.skops"},
            )
            assert response.status_code == 202, response.text
            return int(response.json()["version"])

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        numbers = list(pool.map(create, range(PARALLEL)))
    assert sorted(numbers) == list(range(1, PARALLEL + 1))
    with httpx.Client(base_url=base, headers=headers) as http:
        listed = http.get("/api/v1/models/race/versions").json()["items"]
        assert sorted(v["version"] for v in listed) == list(range(1, PARALLEL + 1))
        assert http.get("/api/v1/models/race").json()["latest_version"] == PARALLEL
