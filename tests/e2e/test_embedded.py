"""`flywheel up` as a newcomer runs it: a real process, real HTTP, an embedded SQLite database."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow
FLYWHEEL = [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env["FLYWHEEL_HOME"] = str(home)
    return env


class Server:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gateway = f"http://127.0.0.1:{free_port()}"
        env = clean_env(home) | {"FLYWHEEL_GATEWAY_PORT": self.gateway.rsplit(":", 1)[1]}
        self.process = subprocess.Popen(
            [*FLYWHEEL, "up", "--port", str(self.port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                raise AssertionError("flywheel up exited:\n" + "".join(self.lines))
            self.lines.append(line)
            if "Application startup complete" in line and self._answers():
                return
        raise AssertionError("flywheel up did not start:\n" + "".join(self.lines))

    def _answers(self) -> bool:
        """Two servers start in this process (API and gateway): wait for the API itself."""
        for _ in range(100):
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "fresh-laptop" / ".flywheel"


@pytest.fixture
def server(home: Path) -> Iterator[Server]:
    srv = Server(home)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def printed_token(lines: list[str]) -> str:
    tokens = [line.strip() for line in lines if line.strip().startswith("fw_")]
    assert len(tokens) == 1, lines
    return tokens[0]


def test_first_start_prints_url_and_admin_token_and_serves_the_api(server: Server) -> None:
    output = "".join(server.lines)
    assert server.url in output
    token = printed_token(server.lines)
    assert (server.home / "flywheel.db").exists()

    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
        assert http.get("/readyz").json()["checks"] == {"database": "ok"}
        exp = http.post("/api/v1/experiments", json={"name": "first"}).json()
        run = http.post(
            "/api/v1/runs", json={"experiment_id": exp["id"], "params": {"a": 1}}
        ).json()
        points = [{"key": "loss", "value": 1 / (i + 1), "step": i} for i in range(2_000)]
        logged = http.post(f"/api/v1/runs/{run['id']}/metrics", json={"metrics": points})
        assert logged.json() == {"written": 2_000}
        found = http.post(
            "/api/v1/runs/search", json={"filter": "metrics.loss < 0.01 AND params.a = '1'"}
        ).json()
        assert [r["id"] for r in found["items"]] == [run["id"]]
        upload = http.post("/api/v1/datasets", json={"name": "d"})
        assert upload.status_code == 201
        version = http.post(
            "/api/v1/datasets/d/versions", files={"file": ("d.csv", b"x,y\n1,a\n2,b\n")}
        )
        assert version.status_code == 201, version.text
        assert (
            http.get("/api/v1/experiments", headers={"Authorization": "Bearer x"}).status_code
            == 401
        )


def test_second_start_keeps_data_and_prints_no_new_token(home: Path) -> None:
    first = Server(home)
    try:
        first.wait_ready()
        token = printed_token(first.lines)
        with httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {token}"}) as http:
            http.post("/api/v1/experiments", json={"name": "kept"})
    finally:
        first.stop()

    second = Server(home)
    try:
        second.wait_ready()
        assert not any(line.strip().startswith("fw_") for line in second.lines)
        with httpx.Client(
            base_url=second.url, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            names = [e["name"] for e in http.get("/api/v1/experiments").json()["items"]]
        assert names == ["kept"]
    finally:
        second.stop()


def test_cli_tokens_create_prints_a_working_token(home: Path) -> None:
    env = clean_env(home)
    subprocess.run([*FLYWHEEL, "db", "upgrade"], env=env, check=True, capture_output=True)
    result = subprocess.run(
        [*FLYWHEEL, "tokens", "create", "--role", "editor", "--name", "ci"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    secret = result.stdout.strip().splitlines()[-1]
    assert secret.startswith("fw_")
    bad = subprocess.run(
        [*FLYWHEEL, "tokens", "create", "--role", "root", "--name", "x"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0
    assert "root" in bad.stderr or "root" in bad.stdout
    srv = Server(home)
    try:
        srv.wait_ready()
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {secret}"}) as http:
            assert http.post("/api/v1/experiments", json={"name": "x"}).status_code == 201
            assert http.get("/api/v1/tokens").status_code == 403
    finally:
        srv.stop()


def test_embedded_worker_finishes_registry_jobs_and_the_gateway_serves(
    server: Server, tmp_path: Path
) -> None:
    """No Redis, no separate worker: the in-process worker takes the version to ready, and
    the in-process gateway serves a deployment of it from a replica process."""
    from tests.e2e.ci_flow import run_registry_flow

    token = printed_token(server.lines)
    run_registry_flow(server.url, token, tmp_path)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as http:
        # public: the embedded gateway answers this one without a token
        variants = [{"name": "main", "model": "churn@latest"}]
        deployment = {"name": "churn", "variants": variants, "public": True}
        assert http.post("/api/v1/deployments", json=deployment).status_code == 201
    row = {"age": 42, "income": 51000.0, "city": "Paris"}
    deadline = time.monotonic() + 60
    while True:
        try:
            answer = httpx.post(f"{server.gateway}/serve/churn/predict", json={"rows": [row]})
            if answer.status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the embedded gateway never served the deployment"
        time.sleep(0.5)
    assert answer.json()["predictions"] in ([0], [1]) and answer.json()["model_version"] == 1


def test_embedded_git_push_runs_the_whole_ci_loop(server: Server, tmp_path: Path) -> None:
    """The same CI flow as on Postgres + Redis + workers, on a laptop with neither."""
    from tests.e2e.ci_flow import run_ci_flow

    run_ci_flow(server.url, printed_token(server.lines), tmp_path, gateway=server.gateway)
