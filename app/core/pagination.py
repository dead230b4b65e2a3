"""Pages with an opaque page_token. Lists page by key, stable under inserts."""

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field
from sqlalchemy import Select
from sqlalchemy.orm import QueryableAttribute, Session

from app.core.errors import BadRequest

T = TypeVar("T")
Row = TypeVar("Row")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_page_token: str | None = Field(
        default=None, description="Pass as page_token to get the next page; null on the last page."
    )


class PageParams(BaseModel):
    page_size: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    page_token: str | None = None


def page_params(
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    page_token: Annotated[str | None, Query(max_length=2000)] = None,
) -> PageParams:
    return PageParams(page_size=page_size, page_token=page_token)


def encode_token(state: dict[str, Any]) -> str:
    raw = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> dict[str, Any]:
    try:
        padded = token + "=" * (-len(token) % 4)
        state = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadRequest(
            "page_token is not valid; pass the next_page_token of a previous page",
            code="invalid_page_token",
        ) from exc
    if not isinstance(state, dict):
        raise BadRequest("page_token is not valid", code="invalid_page_token")
    return state


def keyset_page(
    session: Session,
    stmt: Select[Row],
    key: QueryableAttribute[int],
    params: PageParams,
    *,
    newest_first: bool = False,
) -> tuple[Sequence[Row], str | None]:
    """Page a select ordered by an integer key, ascending (or descending: newest first)."""
    if params.page_token is not None:
        after = decode_token(params.page_token).get("after")
        if not isinstance(after, int):
            raise BadRequest("page_token is not valid for this list", code="invalid_page_token")
        stmt = stmt.where(key < after if newest_first else key > after)
    order = key.desc() if newest_first else key
    rows = session.scalars(stmt.order_by(order).limit(params.page_size + 1)).all()
    if len(rows) <= params.page_size:
        return rows, None
    rows = rows[: params.page_size]
    last = getattr(rows[-1], key.key)
    return rows, encode_token({"after": last})
