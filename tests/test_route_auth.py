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
# The role each operation needs, written out and reviewed by hand: the tests below check the
# routes against this table, never against the routes' own dependencies (a route given the
# wrong role would then pass). Production deployments additionally need the deployer role,
# which the deployments service checks (tests/deployments).
EXPECTED_ROLES: dict[tuple[str, str], Role] = {
    ("GET", "/api/v1/alert-rules"): Role.viewer,
    ("POST", "/api/v1/alert-rules"): Role.editor,
    ("DELETE", "/api/v1/alert-rules/{rule_id}"): Role.editor,
    ("GET", "/api/v1/alert-rules/{rule_id}"): Role.viewer,
    ("PATCH", "/api/v1/alert-rules/{rule_id}"): Role.editor,
    ("GET", "/api/v1/alerts"): Role.viewer,
    ("GET", "/api/v1/datasets"): Role.viewer,
    ("POST", "/api/v1/datasets"): Role.editor,
    ("GET", "/api/v1/datasets/{name}"): Role.viewer,
    ("GET", "/api/v1/datasets/{name}/versions"): Role.viewer,
    ("POST", "/api/v1/datasets/{name}/versions"): Role.editor,
    ("GET", "/api/v1/datasets/{name}/versions/{version}"): Role.viewer,
    ("GET", "/api/v1/deployments"): Role.viewer,
    ("POST", "/api/v1/deployments"): Role.editor,
    ("DELETE", "/api/v1/deployments/{name}"): Role.editor,
    ("GET", "/api/v1/deployments/{name}"): Role.viewer,
    ("PATCH", "/api/v1/deployments/{name}"): Role.editor,
    ("GET", "/api/v1/deployments/{name}/drift-reports"): Role.viewer,
    ("POST", "/api/v1/deployments/{name}/drift-reports"): Role.editor,
    ("GET", "/api/v1/deployments/{name}/drift-reports/{report_id}"): Role.viewer,
    ("PUT", "/api/v1/deployments/{name}/drift-schedule"): Role.editor,
    ("GET", "/api/v1/deployments/{name}/experiments"): Role.viewer,
    ("POST", "/api/v1/deployments/{name}/experiments"): Role.editor,
    ("GET", "/api/v1/deployments/{name}/experiments/{experiment_id}"): Role.viewer,
    ("POST", "/api/v1/deployments/{name}/experiments/{experiment_id}/stop"): Role.editor,
    ("GET", "/api/v1/deployments/{name}/fairness"): Role.viewer,
    ("POST", "/api/v1/deployments/{name}/feedback"): Role.editor,
    ("GET", "/api/v1/deployments/{name}/manifests"): Role.viewer,
    ("GET", "/api/v1/deployments/{name}/metrics"): Role.viewer,
    ("GET", "/api/v1/deployments/{name}/performance"): Role.viewer,
    ("POST", "/api/v1/deployments/{name}/promote"): Role.editor,
    ("GET", "/api/v1/deployments/{name}/replicas"): Role.viewer,
    ("POST", "/api/v1/deployments/{name}/rollback"): Role.editor,
    ("GET", "/api/v1/deployments/{name}/rollouts"): Role.viewer,
    ("GET", "/api/v1/deployments/{name}/rollouts/{rollout_id}"): Role.viewer,
    ("GET", "/api/v1/experiments"): Role.viewer,
    ("POST", "/api/v1/experiments"): Role.editor,
    ("GET", "/api/v1/experiments/{experiment_id}"): Role.viewer,
    ("PATCH", "/api/v1/experiments/{experiment_id}"): Role.editor,
    ("GET", "/api/v1/models"): Role.viewer,
    ("POST", "/api/v1/models"): Role.editor,
    ("DELETE", "/api/v1/models/{name}"): Role.admin,
    ("GET", "/api/v1/models/{name}"): Role.viewer,
    ("PATCH", "/api/v1/models/{name}"): Role.editor,
    ("GET", "/api/v1/models/{name}/alias-moves"): Role.viewer,
    ("DELETE", "/api/v1/models/{name}/aliases/{alias}"): Role.editor,
    ("PUT", "/api/v1/models/{name}/aliases/{alias}"): Role.editor,
    ("GET", "/api/v1/models/{name}/versions"): Role.viewer,
    ("POST", "/api/v1/models/{name}/versions"): Role.editor,
    ("POST", "/api/v1/models/{name}/versions/upload"): Role.admin,
    ("GET", "/api/v1/models/{name}/versions/{version}"): Role.viewer,
    ("PATCH", "/api/v1/models/{name}/versions/{version}"): Role.editor,
    ("GET", "/api/v1/models/{name}/versions/{version}/attribution-drift"): Role.viewer,
    ("POST", "/api/v1/models/{name}/versions/{version}/explain"): Role.viewer,
    ("POST", "/api/v1/models/{name}/versions/{version}/explain/plot"): Role.viewer,
    ("GET", "/api/v1/models/{name}/versions/{version}/importance"): Role.viewer,
    ("POST", "/api/v1/models/{name}/versions/{version}/importance"): Role.editor,
    ("GET", "/api/v1/models/{name}/versions/{version}/importance/plot"): Role.viewer,
    ("GET", "/api/v1/models/{name}/versions/{version}/lineage"): Role.viewer,
    ("POST", "/api/v1/models/{name}/versions/{version}/package"): Role.editor,
    ("GET", "/api/v1/models/{name}/versions/{version}/package/bundle"): Role.viewer,
    ("GET", "/api/v1/pipeline-runs"): Role.viewer,
    ("GET", "/api/v1/pipeline-runs/{run_id}"): Role.viewer,
    ("POST", "/api/v1/pipeline-runs/{run_id}/cancel"): Role.editor,
    ("GET", "/api/v1/pipeline-runs/{run_id}/tasks/{task}/logs"): Role.viewer,
    ("GET", "/api/v1/pipelines"): Role.viewer,
    ("POST", "/api/v1/pipelines"): Role.editor,
    ("GET", "/api/v1/pipelines/{name}"): Role.viewer,
    ("PATCH", "/api/v1/pipelines/{name}"): Role.editor,
    ("GET", "/api/v1/pipelines/{name}/graph"): Role.viewer,
    ("POST", "/api/v1/pipelines/{name}/pause"): Role.editor,
    ("POST", "/api/v1/pipelines/{name}/resume"): Role.editor,
    ("POST", "/api/v1/pipelines/{name}/runs"): Role.editor,
    ("GET", "/api/v1/policies"): Role.viewer,
    ("POST", "/api/v1/policies"): Role.editor,
    ("DELETE", "/api/v1/policies/{policy_id}"): Role.editor,
    ("GET", "/api/v1/policies/{policy_id}"): Role.viewer,
    ("PATCH", "/api/v1/policies/{policy_id}"): Role.editor,
    ("POST", "/api/v1/policies/{policy_id}/backtest"): Role.editor,
    ("GET", "/api/v1/policies/{policy_id}/evaluations"): Role.viewer,
    ("POST", "/api/v1/policies/{policy_id}/trigger"): Role.editor,
    ("GET", "/api/v1/runs"): Role.viewer,
    ("POST", "/api/v1/runs"): Role.editor,
    ("POST", "/api/v1/runs/search"): Role.viewer,
    ("GET", "/api/v1/runs/{run_id}"): Role.viewer,
    ("PATCH", "/api/v1/runs/{run_id}"): Role.editor,
    ("GET", "/api/v1/runs/{run_id}/artifacts"): Role.viewer,
    ("GET", "/api/v1/runs/{run_id}/artifacts/{path:path}"): Role.viewer,
    ("PUT", "/api/v1/runs/{run_id}/artifacts/{path:path}"): Role.editor,
    ("POST", "/api/v1/runs/{run_id}/inputs"): Role.editor,
    ("POST", "/api/v1/runs/{run_id}/metrics"): Role.editor,
    ("GET", "/api/v1/runs/{run_id}/metrics/{key:path}"): Role.viewer,
    ("POST", "/api/v1/runs/{run_id}/params"): Role.editor,
    ("GET", "/api/v1/sources/data"): Role.admin,
    ("POST", "/api/v1/sources/data"): Role.admin,
    ("DELETE", "/api/v1/sources/data/{name}"): Role.admin,
    ("GET", "/api/v1/sources/data/{name}"): Role.admin,
    ("GET", "/api/v1/sources/data/{name}/deliveries"): Role.viewer,
    ("GET", "/api/v1/sources/git"): Role.admin,
    ("POST", "/api/v1/sources/git"): Role.admin,
    ("DELETE", "/api/v1/sources/git/{name}"): Role.admin,
    ("GET", "/api/v1/sources/git/{name}"): Role.admin,
    ("GET", "/api/v1/sources/git/{name}/deliveries"): Role.viewer,
    ("GET", "/api/v1/subscriptions"): Role.admin,
    ("POST", "/api/v1/subscriptions"): Role.admin,
    ("DELETE", "/api/v1/subscriptions/{subscription_id}"): Role.admin,
    ("GET", "/api/v1/subscriptions/{subscription_id}"): Role.admin,
    ("PATCH", "/api/v1/subscriptions/{subscription_id}"): Role.admin,
    ("GET", "/api/v1/subscriptions/{subscription_id}/deliveries"): Role.admin,
    ("POST", "/api/v1/subscriptions/{subscription_id}/deliveries/{delivery_id}/redeliver"): Role.admin,  # noqa: E501
    ("GET", "/api/v1/tokens"): Role.admin,
    ("POST", "/api/v1/tokens"): Role.admin,
    ("DELETE", "/api/v1/tokens/{token_id}"): Role.admin,
}  # fmt: skip
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


def concrete_path(path: str, value: str = "1") -> str:
    return re.sub(r"\{[^}]+\}", value, path)


def api_routes(app: FastAPI) -> list[tuple[str, Any]]:
    """(method, route) for every API operation, with prefixes from included routers applied."""
    return [
        (method, context)
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
        for method in sorted(context.methods or ())
    ]


def test_the_table_names_every_operation_and_nothing_else(app: FastAPI) -> None:
    operations = {(method, route.path) for method, route in api_routes(app)} - PUBLIC
    assert sorted(operations - EXPECTED_ROLES.keys()) == []  # new routes: add them, reviewed
    assert sorted(EXPECTED_ROLES.keys() - operations) == []


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
        role = EXPECTED_ROLES[(method, route.path)]
        for weaker in ROLE_ORDER[: role.rank]:
            headers = {"Authorization": f"Bearer {tokens[weaker]}"}
            denied = client.request(method, path, headers=headers)
            assert denied.status_code == 403, (method, path, weaker, denied.text)
            assert denied.json()["error"]["details"]["required_role"] == role.value
        # with the role it needs, on ids that do not exist: past the check, changing nothing
        enough = {"Authorization": f"Bearer {tokens[role]}"}
        allowed = client.request(method, concrete_path(route.path, "999999"), headers=enough)
        assert allowed.status_code not in (401, 403), (method, path, role, allowed.text)
        checked += 1
    assert checked == len(EXPECTED_ROLES)


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "fw_xyz", "Token fw_xyz"])
def test_malformed_authorization_headers_are_401(client: TestClient, header: str) -> None:
    response = client.get("/api/v1/experiments", headers={"Authorization": header})
    assert response.status_code == 401
    assert "Bearer" in response.headers["www-authenticate"]
