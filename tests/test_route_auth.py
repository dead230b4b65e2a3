"""Every route needs a token and the right role, except an explicit public list."""

import re
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from app.auth.dependencies import RoleRequirement
from app.core.security import ROLE_ORDER, Role

PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    # signed webhooks: the signature authenticates, not a bearer token
    ("POST", "/api/v1/hooks/git/{source}"),
    ("POST", "/api/v1/hooks/data/{source}"),
}
# FastAPI's own routes (OpenAPI document and docs pages) are not APIRoutes and stay public.
FRAMEWORK_PUBLIC = ["/openapi.json", "/docs", "/redoc"]


def required_role(route: Any) -> Role | None:
    found: list[Role] = []

    def walk(dependant: Any) -> None:
        if isinstance(dependant.call, RoleRequirement):
            found.append(dependant.call.role)
        for sub in dependant.dependencies:
            walk(sub)

    walk(route.dependant)
    return max(found, key=lambda r: r.rank) if found else None


def concrete_path(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def api_routes(app: FastAPI) -> list[tuple[str, Any]]:
    """(method, route) for every API operation, with prefixes from included routers applied."""
    return [
        (method, context)
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
        for method in sorted(context.methods or ())
    ]


def test_every_protected_route_declares_a_role(app: FastAPI) -> None:
    missing = [
        (method, route.path)
        for method, route in api_routes(app)
        if (method, route.path) not in PUBLIC and required_role(route) is None
    ]
    assert missing == []


def test_public_routes_answer_without_a_token(client: TestClient) -> None:
    for method, path in PUBLIC:
        if "{" not in path:
            assert client.request(method, path).status_code == 200, path
    for path in FRAMEWORK_PUBLIC:
        assert client.get(path).status_code == 200, path


def test_every_route_refuses_missing_and_bad_tokens_and_low_roles(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    checked = 0
    for method, route in api_routes(app):
        if (method, route.path) in PUBLIC:
            continue
        path = concrete_path(route.path)
        response = client.request(method, path)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        bad = client.request(method, path, headers={"Authorization": "Bearer fw_not-a-token"})
        assert bad.status_code == 401, (method, path)
        role = required_role(route)
        assert role is not None
        for weaker in ROLE_ORDER[: role.rank]:
            headers = {"Authorization": f"Bearer {tokens[weaker]}"}
            denied = client.request(method, path, headers=headers)
            assert denied.status_code == 403, (method, path, weaker, denied.text)
            assert denied.json()["error"]["details"]["required_role"] == role.value
        checked += 1
    assert checked >= 15


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "fw_xyz", "Token fw_xyz"])
def test_malformed_authorization_headers_are_401(client: TestClient, header: str) -> None:
    response = client.get("/api/v1/experiments", headers={"Authorization": header})
    assert response.status_code == 401
    assert "Bearer" in response.headers["www-authenticate"]
