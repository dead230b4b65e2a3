import io
import os
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.jobs import JobContext
from tests.conftest import InlineJobs
from tests.registry.helpers import FEATURES, Registry, churn_frame, fit_pipeline


@pytest.fixture
def ready_version(api: TestClient, tmp_path: Path, jobs: InlineJobs):  # type: ignore[no-untyped-def]
    frame = churn_frame()
    registry = Registry(api, tmp_path)
    dataset = registry.dataset_version(frame)
    model = fit_pipeline(frame)
    registry.register("churn", model, dataset["id"])
    jobs.run()
    return model, frame


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_bundle(bundle: Path, env: Mapping[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """serve.py from an unpacked bundle, as a user would start it; returns it once healthy."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "serve.py", "--host", "127.0.0.1", "--port", str(port)],
        cwd=bundle,
        env=dict(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    return server, url


def test_bundle_serves_the_same_predictions_from_a_subprocess(
    api: TestClient, jobs: InlineJobs, ready_version, tmp_path: Path
) -> None:
    model, frame = ready_version
    requested = api.post("/api/v1/models/churn/versions/1/package")
    assert requested.status_code == 202 and requested.json()["package_status"] == "pending"
    assert jobs.run() == ["registry.package_version"]
    version = api.get("/api/v1/models/churn/versions/1").json()
    assert version["package_status"] == "ready"
    package = version["package"]
    assert package["image"]["status"] == "skipped"
    assert "FLYWHEEL_IMAGE_BUILDER" in package["image"]["reason"]
    assert any(r.startswith("scikit-learn==") for r in package["requirements"])

    download = api.get("/api/v1/models/churn/versions/1/package/bundle")
    assert download.status_code == 200
    assert download.headers["x-content-sha256"] == package["bundle_digest"]
    with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    bundle = tmp_path / "unpacked" / "churn-1"
    assert sorted(p.name for p in bundle.iterdir()) == sorted(package["files"])
    assert "FROM python:3.11-slim" in (bundle / "Dockerfile").read_text()

    server, url = start_bundle(bundle, os.environ)
    try:
        rows = frame[FEATURES].head(25)
        records = [
            {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in rows.to_dict("records")
        ]
        answer = httpx.post(f"{url}/predict", json={"rows": records}).json()
        assert answer["model"] == "churn" and answer["model_version"] == 1
        assert answer["predictions"] == model.predict(rows).tolist()
        np.testing.assert_allclose(answer["probabilities"], model.predict_proba(rows), atol=1e-9)

        split = {"dataframe_split": {"columns": FEATURES, "data": rows.to_numpy().tolist()}}
        assert (
            httpx.post(f"{url}/predict", json=split).json()["predictions"] == answer["predictions"]
        )

        wrong = httpx.post(
            f"{url}/predict", json={"rows": [{"age": "old", "income": 1.0, "city": "Nice"}]}
        )
        assert wrong.status_code == 422 and "age" in wrong.json()["error"]["message"]
        unknown = httpx.post(f"{url}/predict", json={"rows": [{"agee": 1}]})
        assert unknown.status_code == 422 and "agee" in unknown.json()["error"]["message"]
    finally:
        server.terminate()
        server.wait(timeout=10)

    # with FLYWHEEL_SERVE_TOKEN the bundle asks for it
    guarded, url = start_bundle(bundle, {**os.environ, "FLYWHEEL_SERVE_TOKEN": "bundle-secret"})
    try:
        refused = httpx.post(f"{url}/predict", json={"rows": records})
        assert refused.status_code == 401 and "FLYWHEEL_SERVE_TOKEN" in refused.text
        wrong_token = httpx.post(
            f"{url}/predict", json={"rows": records}, headers={"Authorization": "Bearer nope"}
        )
        assert wrong_token.status_code == 401
        bearer = {"Authorization": "Bearer bundle-secret"}
        allowed = httpx.post(f"{url}/predict", json={"rows": records}, headers=bearer)
        assert allowed.status_code == 200 and allowed.json()["predictions"] == answer["predictions"]
    finally:
        guarded.terminate()
        guarded.wait(timeout=10)


def test_bundle_is_reproducible_and_existing_bundle_is_reused(
    api: TestClient, jobs: InlineJobs, ready_version
) -> None:
    api.post("/api/v1/models/churn/versions/1/package")
    jobs.run()
    first = api.get("/api/v1/models/churn/versions/1").json()["package"]["bundle_digest"]
    again = api.post("/api/v1/models/churn/versions/1/package")
    assert again.status_code == 200 and jobs.run() == []
    rebuilt = api.post("/api/v1/models/churn/versions/1/package?rebuild=true")
    assert rebuilt.status_code == 202
    jobs.run()
    assert api.get("/api/v1/models/churn/versions/1").json()["package"]["bundle_digest"] == first


def test_configured_builder_failure_is_recorded(
    api: TestClient, jobs: InlineJobs, ready_version, tmp_path: Path
) -> None:
    settings = jobs.ctx.settings.model_copy(
        update={"image_builder": "flywheel-no-such-builder", "image_registry": "registry.local/ml"}
    )
    jobs.ctx = JobContext(
        settings=settings, artifacts=jobs.ctx.artifacts, session_factory=jobs.ctx.session_factory
    )
    api.post("/api/v1/models/churn/versions/1/package")
    jobs.run()
    version = api.get("/api/v1/models/churn/versions/1").json()
    assert version["package_status"] == "failed"
    assert version["package"]["image"] == {
        "status": "failed",
        "error": "image builder 'flywheel-no-such-builder' is not on PATH",
    }
    assert version["package"]["bundle_digest"]  # the bundle itself was still built


def test_package_needs_a_ready_version(api: TestClient, tmp_path: Path) -> None:
    registry = Registry(api, tmp_path)
    registry.register("p", fit_pipeline(churn_frame()), None)
    response = api.post("/api/v1/models/p/versions/1/package")
    assert response.status_code == 409
    assert api.get("/api/v1/models/p/versions/1/package/bundle").status_code == 404
