"""Run search: the filter language's AST compiled to SQLAlchemy expressions (never SQL strings)."""

import hashlib
import json
import operator
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, and_, exists, false, not_, or_, select
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import UnaryExpression

from app.core.errors import BadRequest, Unprocessable
from app.core.pagination import decode_token, encode_token
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
from app.tracking.models import LatestMetric, Run, RunInput, RunParam, RunTag
from app.tracking.schemas import CodeVersion, RunInputSpec, RunRead, RunSearch

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


def search_runs(session: Session, query: RunSearch) -> tuple[list[RunRead], str | None]:
    expr, order_keys = _parse(query)
    conditions: list[ColumnElement[bool]] = []
    if query.experiment_ids:
        conditions.append(Run.experiment_id.in_(query.experiment_ids))
    if expr is not None:
        conditions.append(compile_expr(expr))
    fingerprint = _fingerprint(query)
    phase, offset = _page_state(query.page_token, fingerprint)
    if len(order_keys) == 1 and order_keys[0].identifier.kind != "attributes":
        ids, state = _by_one_key(session, conditions, order_keys[0], query.page_size, phase, offset)
    else:
        ids, state = _by_columns(session, conditions, order_keys, query.page_size, offset)
    token = (
        encode_token({"q": fingerprint, "phase": state[0], "offset": state[1]}) if state else None
    )
    return run_reads(session, ids), token


def _parse(query: RunSearch) -> tuple[Expr | None, list[OrderKey]]:
    try:
        return parse_filter(query.filter), [parse_order_by(item) for item in query.order_by]
    except FilterSyntaxError as exc:
        raise Unprocessable(
            str(exc),
            code="invalid_filter",
            details={"position": exc.position, "reason": exc.message},
        ) from exc


def _page_state(token: str | None, fingerprint: str) -> tuple[str, int]:
    if token is None:
        return "has", 0
    state = decode_token(token)
    phase, offset = state.get("phase"), state.get("offset")
    if (
        state.get("q") != fingerprint
        or phase not in ("has", "lacks")
        or not isinstance(offset, int)
    ):
        raise BadRequest(
            "page_token belongs to a different query; repeat the same filter and order_by",
            code="invalid_page_token",
        )
    return phase, max(0, offset)


Cursor = tuple[str, int] | None


def _by_one_key(
    session: Session,
    conditions: list[ColumnElement[bool]],
    key: OrderKey,
    size: int,
    phase: str,
    offset: int,
) -> tuple[list[int], Cursor]:
    """Order by one param, metric or tag: walk its (key, value, run_id) index for the runs that
    have it, then the runs that lack it (missing values sort last), without sorting everything."""
    table: Any = KEYED_TABLES[key.identifier.kind]
    name = key.identifier.key
    ids: list[int] = []
    if phase == "has":
        value, run_id = (table.value, table.run_id)
        order = (value.desc(), run_id.desc()) if key.descending else (value.asc(), run_id.asc())
        has = (
            select(table.run_id)
            .join(Run, Run.id == table.run_id)
            .where(table.key == name, *conditions)
            .order_by(*order)
        )
        ids = list(session.scalars(has.offset(offset).limit(size + 1)))
        if len(ids) > size:
            return ids[:size], ("has", offset + size)
        offset = 0
    lacks = (
        select(Run.id)
        .where(*conditions, ~exists().where(table.run_id == Run.id, table.key == name))
        .order_by(Run.id.desc() if key.descending else Run.id.asc())
    )
    wanted = size - len(ids)
    more = list(session.scalars(lacks.offset(offset).limit(wanted + 1)))
    if len(more) > wanted:
        return ids + more[:wanted], ("lacks", offset + wanted)
    return ids + more, None


def _by_columns(
    session: Session,
    conditions: list[ColumnElement[bool]],
    order_keys: list[OrderKey],
    size: int,
    offset: int,
) -> tuple[list[int], Cursor]:
    stmt = select(Run.id).where(*conditions)
    for index, key in enumerate(order_keys):
        stmt, column = _order_target(stmt, key.identifier, index)
        stmt = stmt.order_by(_direction(column, key))
    if not order_keys:
        stmt = stmt.order_by(Run.start_time.desc())
    descending = order_keys[0].descending if order_keys else True
    stmt = stmt.order_by(Run.id.desc() if descending else Run.id.asc())
    ids = list(session.scalars(stmt.offset(offset).limit(size + 1)))
    if len(ids) > size:
        return ids[:size], ("has", offset + size)
    return ids, None


def run_reads(session: Session, ids: Sequence[int]) -> list[RunRead]:
    """Runs with params, tags, latest metrics and inputs, in the order of `ids`, read as rows
    (five indexed queries, no ORM identity map) because a page can hold a thousand runs."""
    if not ids:
        return []
    params: dict[int, dict[str, str]] = defaultdict(dict)
    tags: dict[int, dict[str, str]] = defaultdict(dict)
    metrics: dict[int, dict[str, float]] = defaultdict(dict)
    inputs: dict[int, list[RunInputSpec]] = defaultdict(list)
    keyed: list[tuple[dict[int, Any], Any]] = [
        (params, RunParam),
        (tags, RunTag),
        (metrics, LatestMetric),
    ]
    for target, model in keyed:
        rows = session.execute(
            select(model.run_id, model.key, model.value).where(model.run_id.in_(ids))
        )
        for run_id, key, value in rows:
            target[run_id][key] = value
    for run_id, dataset_version_id, context in session.execute(
        select(RunInput.run_id, RunInput.dataset_version_id, RunInput.context).where(
            RunInput.run_id.in_(ids)
        )
    ):
        inputs[run_id].append(RunInputSpec(dataset_version_id=dataset_version_id, context=context))
    runs = {
        row.id: row
        for row in session.execute(
            select(
                Run.id,
                Run.experiment_id,
                Run.name,
                Run.status,
                Run.start_time,
                Run.end_time,
                Run.duration_ms,
                Run.code_version,
                Run.created_at,
            ).where(Run.id.in_(ids))
        )
    }
    return [
        RunRead(
            id=run_id,
            experiment_id=runs[run_id].experiment_id,
            name=runs[run_id].name,
            status=runs[run_id].status,
            start_time=runs[run_id].start_time,
            end_time=runs[run_id].end_time,
            duration_ms=runs[run_id].duration_ms,
            params=params[run_id],
            tags=tags[run_id],
            metrics=metrics[run_id],
            code_version=CodeVersion.model_validate(runs[run_id].code_version)
            if runs[run_id].code_version
            else None,
            inputs=inputs[run_id],
            created_at=runs[run_id].created_at,
        )
        for run_id in ids
        if run_id in runs
    ]


def _fingerprint(query: RunSearch) -> str:
    shape = {"e": sorted(query.experiment_ids), "f": query.filter, "o": query.order_by}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def _order_target(stmt: Select[Any], ident: Identifier, index: int) -> tuple[Select[Any], Any]:
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
    # an alias per comparison: the subquery must not correlate with a joined-in order table
    table: Any = aliased(KEYED_TABLES[ident.kind])
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
