"""Run search: the filter language's AST compiled to SQLAlchemy expressions (never SQL strings)."""

import hashlib
import json
import operator
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, and_, exists, false, not_, or_, select
from sqlalchemy.orm import Session, aliased, selectinload
from sqlalchemy.sql.elements import UnaryExpression

from app.core.errors import Unprocessable
from app.core.pagination import PageParams, offset_page
from app.tracking.filters import (
    BoolOp,
    Comparison,
    Expr,
    FilterSyntaxError,
    Identifier,
    OrderKey,
    Scalar,
    parse_filter,
    parse_order_by,
)
from app.tracking.models import LatestMetric, Run, RunParam, RunTag
from app.tracking.schemas import RunSearch

ATTRIBUTE_COLUMNS: dict[str, Any] = {
    "id": Run.id,
    "name": Run.name,
    "status": Run.status,
    "experiment_id": Run.experiment_id,
    "start_time": Run.start_time,
    "end_time": Run.end_time,
    "duration_ms": Run.duration_ms,
    "created_at": Run.created_at,
}
TIME_ATTRIBUTES = {"start_time", "end_time", "created_at"}
KEYED_TABLES: dict[str, Any] = {"params": RunParam, "tags": RunTag, "metrics": LatestMetric}


def search_runs(session: Session, query: RunSearch) -> tuple[Sequence[Run], str | None]:
    try:
        expr = parse_filter(query.filter)
        order_keys = [parse_order_by(item) for item in query.order_by]
    except FilterSyntaxError as exc:
        raise Unprocessable(
            str(exc),
            code="invalid_filter",
            details={"position": exc.position, "reason": exc.message},
        ) from exc
    stmt = select(Run).options(
        selectinload(Run.params),
        selectinload(Run.tags),
        selectinload(Run.latest_metrics),
        selectinload(Run.inputs),
    )
    if query.experiment_ids:
        stmt = stmt.where(Run.experiment_id.in_(query.experiment_ids))
    if expr is not None:
        stmt = stmt.where(compile_expr(expr))
    for index, key in enumerate(order_keys):
        stmt, column = _order_target(stmt, key.identifier, index)
        stmt = stmt.order_by(_direction(column, key))
    if not order_keys:
        stmt = stmt.order_by(Run.start_time.desc())
    stmt = stmt.order_by(Run.id.desc())
    page = PageParams(page_size=query.page_size, page_token=query.page_token)
    return offset_page(session, stmt, page, _fingerprint(query))


def _fingerprint(query: RunSearch) -> str:
    shape = {"e": sorted(query.experiment_ids), "f": query.filter, "o": query.order_by}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def _order_target(stmt: Select[Run], ident: Identifier, index: int) -> tuple[Select[Run], Any]:
    """The column to order by; a param, metric or tag is joined in so runs without it sort last."""
    if ident.kind == "attributes":
        return stmt, ATTRIBUTE_COLUMNS[ident.key]
    joined: Any = aliased(KEYED_TABLES[ident.kind], name=f"order_{index}")
    stmt = stmt.outerjoin(joined, and_(joined.run_id == Run.id, joined.key == ident.key))
    return stmt, joined.value


def _direction(column: ColumnElement[Any], key: OrderKey) -> UnaryExpression[Any]:
    ordered = column.desc() if key.descending else column.asc()
    return ordered.nulls_last()


def compile_expr(expr: Expr) -> ColumnElement[bool]:
    if isinstance(expr, BoolOp):
        parts = [compile_expr(operand) for operand in expr.operands]
        return and_(*parts) if expr.op == "AND" else or_(*parts)
    return _compile_comparison(expr)


def _compile_comparison(cmp: Comparison) -> ColumnElement[bool]:
    ident = cmp.identifier
    if ident.kind == "attributes":
        column = ATTRIBUTE_COLUMNS[ident.key]
        value = _attribute_value(ident.key, cmp.value)
        return _apply(column, cmp.op, value)
    table = KEYED_TABLES[ident.kind]
    same_run = and_(table.run_id == Run.id, table.key == ident.key)
    if cmp.op == "IS NULL":
        return not_(exists().where(same_run))
    if cmp.op == "IS NOT NULL":
        return exists().where(same_run)
    return exists().where(same_run, _apply(table.value, cmp.op, cmp.value))


def _attribute_value(key: str, value: Scalar | tuple[Scalar, ...] | None) -> Any:
    if value is None:
        return None
    if key == "status":
        return (
            tuple(str(v).lower() for v in value) if isinstance(value, tuple) else str(value).lower()
        )
    if key not in TIME_ATTRIBUTES:
        return value
    if isinstance(value, tuple):
        return tuple(_as_time(item) for item in value)
    return _as_time(value)


def _as_time(value: Scalar) -> datetime:
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(value) / 1000, tz=UTC)


COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def _apply(column: ColumnElement[Any], op: str, value: Any) -> ColumnElement[bool]:
    if op in COMPARISONS:
        return cast(ColumnElement[bool], COMPARISONS[op](column, value))
    match op:
        case "IN":
            return column.in_(list(value)) if value else false()
        case "NOT IN":
            return column.not_in(list(value))
        case "LIKE":
            return column.like(value)
        case "NOT LIKE":
            return column.not_like(value)
        case "ILIKE":
            return column.ilike(value)
        case "NOT ILIKE":
            return column.not_ilike(value)
        case "IS NULL":
            return column.is_(None)
        case "IS NOT NULL":
            return column.is_not(None)
    raise Unprocessable(f"operator {op!r} is not supported", code="invalid_filter")
