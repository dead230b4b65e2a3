"""Bodies are refused before they are read: 401 with no token, 413 past a route's limit,
on a real socket (the server must answer while the client has sent only the headers)."""

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.auth.guard import MAX_HOOK_BODY
from app.core.config import Settings
from app.core.security import Role
from app.main import create_app
from tests.conftest import InlineJobs
from tests.live import headers_only, live_server

JSON_LIMIT = 4096
UPLOAD_LIMIT = 64 * 1024


@pytest.fixture
def small_limits(
    settings: Settings, session_factory: sessionmaker[Session], jobs: InlineJobs
) -> Iterator[str]:
    limited = settings.model_copy(
        update={"max_request_body_bytes": JSON_LIMIT, "max_upload_bytes": UPLOAD_LIMIT}
    )
    with live_server(create_app(limited, session_factory, publish=jobs.publish)) as url:
        yield url


def request_head(path: str, length: int, token: str | None = None, method: str = "POST") -> str:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {length}\r\n"
    )


def test_no_token_is_a_401_before_a_huge_body_is_read(small_limits: str) -> None:
    for token in (None, "fw_not_a_real_token"):
        status, body = headers_only(
            small_limits, request_head("/api/v1/experiments", 256 * 1024 * 1024, token)
        )
        assert status == 401, body
        assert b'"unauthorized"' in body


def test_a_declared_length_past_the_limit_is_a_413_before_reading(
    small_limits: str, tokens: dict[Role, str]
) -> None:
    status, body = headers_only(
        small_limits, request_head("/api/v1/experiments", JSON_LIMIT + 1, tokens[Role.admin])
    )
    assert status == 413 and b"payload_too_large" in body and b"4,096" in body
    hook = request_head("/api/v1/hooks/git/anything", MAX_HOOK_BODY + 1)
    status, body = headers_only(small_limits, hook)  # no token needed there: signed
    assert status == 413 and b"webhook bodies" in body


def test_a_streamed_body_is_cut_at_the_limit(
    small_limits: str, auth: Callable[[Role], dict[str, str]]
) -> None:
    import httpx

    def chunks(total: int) -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(total // 1024):
            yield b"x" * 1024
        yield b'"}'

    with httpx.Client(base_url=small_limits, headers=auth(Role.admin), timeout=60) as client:
        big = client.post("/api/v1/experiments", content=chunks(JSON_LIMIT * 4))
        assert big.status_code == 413, big.text
        assert big.json()["error"]["code"] == "payload_too_large"
        small = client.post("/api/v1/experiments", json={"name": "fits"})
        assert small.status_code == 201, small.text
        # an upload route has its own, larger limit
        experiment = small.json()["id"]
        run = client.post("/api/v1/runs", json={"experiment_id": experiment}).json()
        fits = client.put(f"/api/v1/runs/{run['id']}/artifacts/a.bin", content=b"x" * 20_000)
        assert fits.status_code in (200, 201), fits.text
        over = client.put(
            f"/api/v1/runs/{run['id']}/artifacts/b.bin", content=b"x" * (UPLOAD_LIMIT + 1)
        )
        assert over.status_code == 413, over.text
        assert "FLYWHEEL_MAX_UPLOAD_BYTES" in over.json()["error"]["message"]


def test_every_operation_that_takes_a_body_and_a_token_refuses_without_one(
    api: TestClient,
) -> None:
    """Checked against the OpenAPI document: an operation with a security requirement and a
    request body answers 401 to a body without a token (the guard's table misses none)."""
    document = api.get("/openapi.json").json()
    anonymous = TestClient(api.app, raise_server_exceptions=False)
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method.upper() not in ("POST", "PUT", "PATCH", "DELETE"):
                continue
            if not operation.get("security"):
                continue
            concrete = path.replace("{", "").replace("}", "")
            response = anonymous.request(method.upper(), concrete, content=b"{}")
            assert response.status_code == 401, (method, path, response.text)
            checked += 1
    assert checked > 40
