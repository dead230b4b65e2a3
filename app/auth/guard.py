"""The API's front door: a request that carries a body is authenticated and its size bounded
before any of the body is read.

FastAPI reads and parses a body before it runs a route's dependencies, so a role check alone
let an anonymous 256 MiB JSON body be read whole (and grow the process) before its 401. This
ASGI layer answers 401 from the headers alone, and 413 from Content-Length, or as soon as a
streamed body passes the route's limit. The token is checked again, with its role, by the
route's own dependency (which reuses the principal found here).
"""

import re
from dataclasses import dataclass

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth.service import Principal, authenticate
from app.core.config import API_PREFIX, Settings
from app.core.db import unit_of_work
from app.core.errors import AppError, Unauthorized, error_response

MAX_HOOK_BODY = 25 * 1024 * 1024
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class BodyRule:
    method: str
    path: re.Pattern[str]
    kind: str  # "upload" (max_upload_bytes) or "hook" (signed, no token; MAX_HOOK_BODY)


# Routes whose bodies are files, and the webhook receivers (authenticated by signature, which
# needs the body). Every other body under the API prefix is JSON, needs a token and is bounded
# by max_request_body_bytes.
BODY_RULES = (
    BodyRule("POST", re.compile(rf"{API_PREFIX}/datasets/[^/]+/versions"), "upload"),
    BodyRule("POST", re.compile(rf"{API_PREFIX}/models/[^/]+/versions/upload"), "upload"),
    BodyRule("PUT", re.compile(rf"{API_PREFIX}/runs/[^/]+/artifacts/.+"), "upload"),
    BodyRule("POST", re.compile(rf"{API_PREFIX}/hooks/(git|data)/[^/]+"), "hook"),
)


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing passes it on (it turns any other error
    while reading into a 400)."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__(
            status_code=413,
            detail=f"{what} are limited to {limit:,} bytes; send a smaller body"
            + (" or raise FLYWHEEL_MAX_UPLOAD_BYTES" if what == "uploads" else ""),
        )


def rule_for(method: str, path: str) -> BodyRule | None:
    return next((r for r in BODY_RULES if r.method == method and r.path.fullmatch(path)), None)


class RequestGuard:
    def __init__(
        self, app: ASGIApp, settings: Settings, session_factory: sessionmaker[Session]
    ) -> None:
        self.app = app
        self.settings = settings
        self.session_factory = session_factory

    def _limit(self, rule: BodyRule | None) -> tuple[int, str]:
        if rule is None:
            return self.settings.max_request_body_bytes, "JSON bodies"
        if rule.kind == "hook":
            return MAX_HOOK_BODY, "webhook bodies"
        return self.settings.max_upload_bytes, "uploads"

    def _authenticate(self, headers: Headers) -> Principal:
        scheme, _, secret = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("send an API token as 'Authorization: Bearer <token>'")
        with unit_of_work(self.session_factory) as session:
            return authenticate(
                session,
                secret.strip(),
                touch_every_seconds=self.settings.token_last_used_resolution_seconds,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method", "")
        path: str = scope.get("path", "")
        if scope["type"] != "http" or method not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        rule = rule_for(method, path)
        if path.startswith(API_PREFIX + "/") and (rule is None or rule.kind != "hook"):
            try:
                principal = await run_in_threadpool(self._authenticate, headers)
            except AppError as exc:
                await self._refuse(scope, receive, send, exc)
                return
            except OperationalError:
                message = "the database is not reachable; retry"
                await error_response(503, "database_unavailable", message)(scope, receive, send)
                return
            scope.setdefault("state", {})["principal"] = principal
        limit, what = self._limit(rule)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            response = error_response(413, "payload_too_large", BodyTooLarge(limit, what).detail)
            await response(scope, receive, send)
            return
        seen = 0

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit, what)
            return message

        await self.app(scope, bounded_receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, exc: AppError) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        response = error_response(exc.status_code, exc.code, exc.message, exc.details, headers)
        await response(scope, receive, send)


def principal_from_guard(request: Request) -> Principal | None:
    principal = request.scope.get("state", {}).get("principal")
    return principal if isinstance(principal, Principal) else None
