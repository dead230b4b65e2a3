"""One error hierarchy and one JSON shape for every failure: {"error": {code, message, details}}."""

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class AppError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: Any = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code


class BadRequest(AppError):
    status_code = 400
    code = "bad_request"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"


class Unprocessable(AppError):
    status_code = 422
    code = "invalid"


class ServiceUnavailable(AppError):
    status_code = 503
    code = "unavailable"


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    """The shape of every error the API returns."""

    error: ErrorBody


def error_response(
    status_code: int, code: str, message: str, details: Any = None, headers: Any = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(status_code=status_code, content=body, headers=headers)


def _location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(f".{item}" if parts else str(item))
    return "".join(parts)


# How pydantic names a union member or a validator wrapper it tried, e.g.
# "function-after[_something(), FeedbackItem]", "list[int]", "tagged-union[...]".
_SCHEMA_LABEL = re.compile(r"^[\w-]+\[.*\]$")


def _sent_location(loc: tuple[int | str, ...], body: Any, missing: bool) -> tuple[int | str, ...]:
    """The error's location as a path in what was sent (`body.items[0].request_id`): pydantic
    also names the union member or validator it tried (`FeedbackBatch`, `function-after[...]`),
    which is no place in the request. A step is kept when it leads into the body, or when it
    is the last one and names a field that was not sent."""
    if not loc or loc[0] != "body" or not isinstance(body, dict | list):
        return tuple(p for p in loc if not (isinstance(p, str) and _SCHEMA_LABEL.match(p)))
    path: list[int | str] = [loc[0]]
    value: Any = body
    for index, part in enumerate(loc[1:], start=1):
        if _step(value, part):
            value = value[part]
        elif not (missing and index == len(loc) - 1 and isinstance(value, dict)):
            continue  # a name pydantic gave a union member or a validator, not a place
        path.append(part)
    return tuple(path)


def _step(value: Any, part: int | str) -> bool:
    """Whether `part` leads into `value` (a key of a mapping, an index of a list)."""
    if isinstance(value, dict):
        return isinstance(part, str) and part in value
    return isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    details: list[dict[str, Any]] = []
    for err in exc.errors():
        loc = _sent_location(tuple(err.get("loc", ())), exc.body, err.get("type") == "missing")
        detail = _field_detail(loc, err.get("msg", ""))
        if detail not in details:  # two union members can fail the same way
            details.append(detail)
    return details


def _field_detail(loc: Sequence[int | str], message: str) -> dict[str, Any]:
    return {"loc": list(loc), "field": _location(tuple(loc)), "message": message}


def _summary(details: list[dict[str, Any]]) -> str:
    first = details[0] if details else {"field": "request", "message": "invalid"}
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"{first['field']}: {first['message']}{more}"


def invalid_fields(problems: Sequence[tuple[Sequence[int | str], str]]) -> Unprocessable:
    """A 422 for checks the service makes (against stored state), shaped like a request
    validation error: one {loc, field, message} per bad field, the first in the message."""
    details = [_field_detail(loc, message) for loc, message in problems]
    return Unprocessable(_summary(details), details=details, code="validation_error")


async def _app_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return error_response(exc.status_code, exc.code, exc.message, exc.details, headers)


async def _validation_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = _validation_details(exc)
    return error_response(422, "validation_error", _summary(details), details)


async def _http_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {
        404: "not_found",
        405: "method_not_allowed",
        401: "unauthorized",
        403: "forbidden",
        413: "payload_too_large",
    }
    code = codes.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), None, exc.headers)


async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    logger.error("database unavailable: %s", exc)
    return error_response(503, "database_unavailable", "the database is not reachable; retry")


INT64_RANGE = f"{-(2**63):,} to {2**63 - 1:,}"
OUT_OF_RANGE = (
    f"a number in the request is outside what the database stores (whole numbers from "
    f"{INT64_RANGE}); ids, offsets and counts must fit"
)


async def _unstorable_value(_request: Request, exc: Exception) -> JSONResponse:
    """A value the database cannot hold: the request's fault, and nothing was written (the
    unit of work rolled back)."""
    text = str(getattr(exc, "orig", exc))
    if "NUL" in text or "\\u0000 cannot be converted" in text:
        message = "text in the request contains a NUL (\\u0000) character; remove it"
        return error_response(422, "invalid_text", message)
    if "out of range" in text or "too large to convert" in text:
        return error_response(422, "value_out_of_range", OUT_OF_RANGE)
    return await _unhandled(_request, exc)


async def _overflow(request: Request, exc: Exception) -> JSONResponse:
    # sqlite3 refuses to bind an int beyond 64 bits with a bare OverflowError
    if "too large to convert to SQLite" in str(exc):
        return await _unstorable_value(request, exc)
    return await _unhandled(request, exc)


async def _unhandled(_request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(DataError, _unstorable_value)
    app.add_exception_handler(OverflowError, _overflow)
    app.add_exception_handler(Exception, _unhandled)
