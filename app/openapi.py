"""The OpenAPI document names every error status an operation can answer.

Some errors come from layers a route does not see: the request guard (401 before the body,
413 by route), the role dependency (403), FastAPI's own parsing (400 for an unreadable
body, 422 for an invalid one), pagination tokens (400), path look-ups (404) and the
database being away (503). Documenting them here, from the same facts those layers act on,
keeps generated SDKs and fuzzers honest without each router repeating them.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from app.auth.dependencies import RoleRequirement
from app.auth.guard import BODY_METHODS, rule_for
from app.core.config import API_PREFIX
from app.core.security import Role

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}

WHY = {
    400: "The request could not be read: an unparsable body or an invalid page_token.",
    401: "No token, or a token that is unknown, revoked or expired.",
    403: "The token's role is below the one this operation needs.",
    404: "Something the path names does not exist.",
    413: "The body is larger than this route accepts.",
    422: "A parameter or the body is invalid; `details` names each field and what to fix.",
    503: "The database is not reachable; retry.",
}


def _required_role(dependant: Any) -> Role | None:
    found: list[Role] = []
    stack = [dependant]
    while stack:
        current = stack.pop()
        if isinstance(current.call, RoleRequirement):
            found.append(current.call.role)
        stack.extend(current.dependencies)
    return max(found, key=lambda r: r.rank) if found else None


def _is_hook(method: str, path: str) -> bool:
    rule = rule_for(method, path)
    return rule is not None and rule.kind == "hook"


def error_statuses(
    method: str, path: str, operation: dict[str, Any], role: Role | None
) -> set[int]:
    """The statuses the shared layers can answer for one operation."""
    statuses: set[int] = set()
    parameters = operation.get("parameters", [])
    under_api = path.startswith(API_PREFIX + "/")
    if under_api:
        statuses.add(503)
    if role is not None or (under_api and method in BODY_METHODS and not _is_hook(method, path)):
        statuses.add(401)
    if _is_hook(method, path):
        statuses.add(401)  # a missing or wrong signature
    if role is not None and role != Role.viewer:
        statuses.add(403)
    if under_api and method in BODY_METHODS:
        statuses.add(413)
    if "requestBody" in operation:
        statuses |= {400, 422}
    if parameters:
        statuses.add(422)
    if any(p.get("in") == "path" for p in parameters):
        statuses.add(404)
    if any(p.get("name") == "page_token" for p in parameters):
        statuses.add(400)
    return statuses


def _document(operation: dict[str, Any], statuses: set[int]) -> None:
    responses = operation.setdefault("responses", {})
    for status in sorted(statuses):
        entry = responses.setdefault(str(status), {"description": WHY[status]})
        # errors are JSON even where the success is a file, an image or text, and a 422 is in
        # the one error shape too (FastAPI would document its own HTTPValidationError)
        entry.setdefault("content", {})["application/json"] = {"schema": ERROR_REF}
        if entry.get("description") in ("", "Successful Response", None):
            entry["description"] = WHY[status]


def install_openapi(app: FastAPI) -> None:
    generate = app.openapi  # FastAPI's own, which caches in app.openapi_schema
    done = False

    def openapi() -> dict[str, Any]:
        nonlocal done
        document = generate()
        if done:
            return document
        roles = {
            context.original_route.name: _required_role(context.dependant)
            for context in iter_route_contexts(app.routes)
            if isinstance(context.original_route, APIRoute)
        }
        for path, item in document.get("paths", {}).items():
            for method, operation in item.items():
                role = roles.get(operation.get("operationId", ""))
                _document(operation, error_statuses(method.upper(), path, operation, role))
        schemas = document.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        done = True
        return document

    app.openapi = openapi  # type: ignore[method-assign]
