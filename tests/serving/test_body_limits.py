"""The data plane bounds a body before reading it: 413 from Content-Length alone, or as soon
as a streamed body passes the limit."""

from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette

from app.core.config import Settings
from app.core.security import Role
from app.serving.access import TokenCache
from app.serving.data_plane import DataPlane
from tests.live import headers_only, live_server

LIMIT = 2048


@pytest.fixture
def plane(session_factory: sessionmaker[Session]) -> Iterator[str]:
    app = Starlette()
    gateway = SimpleNamespace(
        settings=Settings(max_prediction_body_bytes=LIMIT),
        served={},
        known=frozenset(),
        access=TokenCache(session_factory, ttl=5),
    )
    app.add_middleware(DataPlane, gateway=gateway)
    with live_server(app) as url:  # type: ignore[arg-type]
        yield url


@pytest.fixture
def bearer(tokens: dict[Role, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[Role.viewer]}"}


def test_a_declared_length_past_the_limit_is_answered_before_the_body(
    plane: str, bearer: dict[str, str]
) -> None:
    head = (
        "POST /v2/models/any/infer HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: {bearer['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {256 * 1024 * 1024}\r\n"
    )
    status, body = headers_only(plane, head)
    assert status == 413, body
    assert b"payload_too_large" in body and b"2,048" in body


def test_a_streamed_body_is_cut_at_the_limit(plane: str, bearer: dict[str, str]) -> None:
    with httpx.Client(base_url=plane, headers=bearer, timeout=60) as http:
        over = http.post("/serve/any/predict", content=iter([b"x" * 1024] * 4))
        assert over.status_code == 413 and over.json()["error"]["code"] == "payload_too_large"
        within = http.post("/serve/any/predict", content=iter([b"{}"]))
        assert within.status_code == 404  # read whole, then: not served here
