"""Who may call the data plane: a valid token, checked before the body is read and answered
from a cache that forgets within its ttl (so a revoked token stops working in seconds)."""

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette

from app.auth import service as auth_service
from app.core.config import Settings
from app.core.db import unit_of_work
from app.core.security import Role
from app.serving.access import TokenCache
from app.serving.data_plane import DataPlane
from tests.live import headers_only, live_server


def new_token(factory: sessionmaker[Session], role: Role = Role.viewer) -> tuple[int, str]:
    with unit_of_work(factory) as session:
        token, secret = auth_service.create_token(session, name="caller", role=role)
        return token.id, secret


def revoke(factory: sessionmaker[Session], token_id: int) -> None:
    with unit_of_work(factory) as session:
        admin = auth_service.Principal(token_id=0, name="admin", role=Role.admin)
        auth_service.revoke_token(session, token_id, by=admin)


def test_the_cache_answers_within_its_ttl_and_forgets_after(
    session_factory: sessionmaker[Session],
) -> None:
    token_id, secret = new_token(session_factory)
    header = f"Bearer {secret}".encode()

    async def check(cache: TokenCache) -> str | None:
        return await cache.refusal(header)

    for missing in (None, b"", b"Basic abc", b"Bearer "):
        refusal = asyncio.run(TokenCache(session_factory, 5).refusal(missing))
        assert refusal is not None and "send an API token" in refusal
    assert asyncio.run(TokenCache(session_factory, 5).refusal(b"Bearer fw_nope")) == (
        "the bearer token is not valid"
    )
    remembering = TokenCache(session_factory, ttl=3600)
    forgetting = TokenCache(session_factory, ttl=0)
    assert asyncio.run(check(remembering)) is None and asyncio.run(check(forgetting)) is None
    revoke(session_factory, token_id)
    assert asyncio.run(check(remembering)) is None  # within its ttl: the cached answer
    assert asyncio.run(check(forgetting)) == "the bearer token has been revoked"


@pytest.fixture
def plane(session_factory: sessionmaker[Session]) -> Iterator[tuple[str, SimpleNamespace]]:
    app = Starlette()
    gateway = SimpleNamespace(
        settings=Settings(),
        served={},
        known=frozenset(),
        access=TokenCache(session_factory, ttl=0),
    )
    app.add_middleware(DataPlane, gateway=gateway)
    with live_server(app) as url:  # type: ignore[arg-type]
        yield url, gateway


def test_every_data_plane_route_needs_a_token_unless_the_deployment_is_public(
    plane: tuple[str, SimpleNamespace], session_factory: sessionmaker[Session]
) -> None:
    url, gateway = plane
    token_id, secret = new_token(session_factory)
    routes = ("/serve/d/predict", "/serve/d/explain", "/v2/models/d/infer")
    with httpx.Client(base_url=url, timeout=60) as anonymous:
        for route in routes:
            refused = anonymous.post(route, json={"rows": []})
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "unauthorized"
            assert refused.headers["www-authenticate"] == "Bearer"
            allowed = anonymous.post(
                route, json={"rows": []}, headers={"Authorization": f"Bearer {secret}"}
            )
            assert allowed.status_code == 404  # past the check: not served by this stub
        gateway.served["d"] = SimpleNamespace(public=True, lanes=[])
        assert anonymous.post("/serve/d/predict", json={"rows": []}).status_code == 404
        gateway.served["d"].public = False
        assert anonymous.post("/serve/d/predict", json={"rows": []}).status_code == 401
    revoke(session_factory, token_id)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}) as revoked:
        answer = revoked.post("/serve/d/predict", json={"rows": []})
        assert answer.status_code == 401 and "revoked" in answer.json()["error"]["message"]


def test_no_token_is_refused_before_a_huge_body_is_read(plane: tuple[str, SimpleNamespace]) -> None:
    head = (
        "POST /serve/d/predict HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nContent-Length: {10 * 1024 * 1024}\r\n"
    )
    status, body = headers_only(plane[0], head)
    assert status == 401, body


def test_a_deployment_still_starting_is_a_503_to_retry_not_a_404(
    plane: tuple[str, SimpleNamespace], session_factory: sessionmaker[Session]
) -> None:
    url, gateway = plane
    _, secret = new_token(session_factory)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}) as http:
        gateway.known = None  # before the first reconcile: anything may be starting
        early = http.post("/serve/d/predict", json={"rows": []})
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        assert early.json()["error"]["code"] == "starting"
        gateway.known = frozenset({"d"})  # in the database, not loaded here yet
        assert http.post("/v2/models/d/infer", json={"inputs": []}).status_code == 503
        gateway.known = frozenset()
        assert http.post("/serve/d/predict", json={"rows": []}).status_code == 404


def test_the_data_plane_answers_a_wrong_method_in_the_one_error_shape(
    plane: tuple[str, SimpleNamespace],
) -> None:
    wrong = httpx.get(f"{plane[0]}/serve/d/predict")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["code"] == "method_not_allowed"
