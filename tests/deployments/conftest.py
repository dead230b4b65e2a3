"""Two ready versions of `churn` (1 = champion, 2 = challenger) for deployment tests."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import InlineJobs
from tests.registry.helpers import Registry, churn_frame, fit_pipeline


@pytest.fixture
def versions(api: TestClient, tmp_path: Path, jobs: InlineJobs) -> None:
    frame = churn_frame()
    registry = Registry(api, tmp_path)
    dataset = registry.dataset_version(frame)
    registry.register("churn", fit_pipeline(frame), dataset["id"])
    registry.register("churn", fit_pipeline(churn_frame(seed=3)), dataset["id"])
    jobs.run()
    api.put("/api/v1/models/churn/aliases/champion", json={"version": 1})
    api.put("/api/v1/models/churn/aliases/challenger", json={"version": 2})
