"""The production shape: API process, Celery worker process, Redis broker, Postgres."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.migrate import upgrade
from tests.dbutil import scratch_postgres
from tests.e2e.ci_flow import run_ci_flow, run_registry_flow
from tests.e2e.services import (
    admin_token,
    redis_url,
    require_redis,
    service_env,
    start_api,
    start_worker,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(database_url: str, requires_postgres: None, tmp_path: Path) -> Iterator[tuple[str, str]]:
    broker = redis_url(7)
    require_redis(broker)
    with scratch_postgres(database_url, prefix="flywheel_e2e") as url:
        upgrade(url)
        token = admin_token(url)
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
    run_registry_flow(base, token, tmp_path)


def test_git_push_trains_evaluates_registers_and_packages(
    stack: tuple[str, str], tmp_path: Path
) -> None:
    base, token = stack
    run_ci_flow(base, token, tmp_path)
