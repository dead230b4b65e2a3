import hashlib
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.live import live_server
from tests.tracking.test_experiments_and_runs import make_experiment, make_run


@pytest.fixture
def run_id(api: TestClient) -> int:
    return int(make_run(api, make_experiment(api)["id"])["id"])


def test_upload_download_round_trip_with_digest(api: TestClient, run_id: int, settings) -> None:
    content = b"col\n" + b"x" * 3_000_000
    response = api.put(
        f"/api/v1/runs/{run_id}/artifacts/model/weights.bin",
        content=content,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    digest = hashlib.sha256(content).hexdigest()
    assert body["digest"] == digest and body["size_bytes"] == len(content)
    assert body["path"] == "model/weights.bin"

    got = api.get(f"/api/v1/runs/{run_id}/artifacts/model/weights.bin")
    assert got.status_code == 200
    assert got.content == content
    assert got.headers["x-content-sha256"] == digest

    listed = api.get(f"/api/v1/runs/{run_id}/artifacts").json()["items"]
    assert [a["path"] for a in listed] == ["model/weights.bin"]
    stored = settings.resolved_artifact_root / "objects" / "sha256" / digest[:2] / digest
    assert stored.read_bytes() == content


def test_identical_content_is_stored_once(api: TestClient, run_id: int, settings) -> None:
    for path in ("a.txt", "b/c.txt"):
        api.put(f"/api/v1/runs/{run_id}/artifacts/{path}", content=b"same bytes")
    objects = [p for p in (settings.resolved_artifact_root / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 1


def test_overwriting_a_path_points_it_at_the_new_content(api: TestClient, run_id: int) -> None:
    api.put(f"/api/v1/runs/{run_id}/artifacts/notes.txt", content=b"one")
    api.put(f"/api/v1/runs/{run_id}/artifacts/notes.txt", content=b"two")
    assert api.get(f"/api/v1/runs/{run_id}/artifacts/notes.txt").content == b"two"


@pytest.mark.parametrize(
    "path",
    [
        "..%2F..%2Fetc%2Fpasswd",
        "a%2F..%2F..%2Fb",
        "a//b",
        "%2E%2Fa",
        "a%2F%2E",
        "%2Fetc%2Fpasswd",
        "a%5Cb",
        "a%00b",
    ],
)
def test_path_traversal_is_refused(api: TestClient, run_id: int, path: str) -> None:
    put = api.put(f"/api/v1/runs/{run_id}/artifacts/{path}", content=b"evil")
    assert put.status_code == 422, (path, put.text)
    assert "path" in put.json()["error"]["message"]
    get = api.get(f"/api/v1/runs/{run_id}/artifacts/{path}")
    assert get.status_code == 422
    assert api.get(f"/api/v1/runs/{run_id}/artifacts").json()["items"] == []


def test_raw_dotdot_over_a_real_socket_is_refused(
    api: TestClient, run_id: int, tmp_path: Path
) -> None:
    """Clients normalise '..' away; send the raw request line to check the server itself."""
    with live_server(api.app) as url:
        port = int(url.rsplit(":", 1)[1])
        token = api.headers["Authorization"]
        request = (
            f"GET /api/v1/runs/{run_id}/artifacts/../../../../etc/passwd HTTP/1.1\r\n"
            f"Host: localhost\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request.encode())
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        status_line = reply.split(b"\r\n", 1)[0]
        assert b" 422 " in status_line or b" 404 " in status_line, status_line
        assert b"root:" not in reply


def test_missing_artifact_and_run(api: TestClient, run_id: int) -> None:
    assert api.get(f"/api/v1/runs/{run_id}/artifacts/nope.txt").status_code == 404
    assert api.put("/api/v1/runs/999999/artifacts/a.txt", content=b"x").status_code == 404
