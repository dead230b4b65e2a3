"""Batch metric ingest: the hot path of tracking, kept to a few statements per request.

The history goes in with one COPY on Postgres (a bulk INSERT elsewhere); each key's latest
point moves forward with one INSERT ... ON CONFLICT DO UPDATE, in the same transaction.
"""

import time
from typing import Any, cast

from sqlalchemy import Table, insert, select, tuple_
from sqlalchemy.orm import Session

from app.core.db import dialect_insert
from app.core.errors import NotFound, Unprocessable
from app.tracking.models import LatestMetric, Metric, Run
from app.tracking.schemas import MetricPoint

# (run_id, key, value, step, timestamp)
Row = tuple[int, str, float, int, int]
COPY_SQL = "COPY metric (run_id, key, value, step, timestamp) FROM STDIN"
METRIC = cast(Table, Metric.__table__)
LATEST = cast(Table, LatestMetric.__table__)


def log_metrics(session: Session, run_id: int, points: list[MetricPoint], *, limit: int) -> int:
    if len(points) > limit:
        raise Unprocessable(
            f"at most {limit} metric points per request; got {len(points)}; split the batch",
            details={"limit": limit, "received": len(points)},
        )
    # One lock per batch stands in for a per-row foreign key check on the history table.
    locked = select(Run.id).where(Run.id == run_id).with_for_update(key_share=True, read=True)
    if session.scalar(locked) is None:
        raise NotFound(f"run {run_id} does not exist")
    now_ms = int(time.time() * 1000)
    rows: list[Row] = [
        (run_id, p.key, p.value, p.step, now_ms if p.timestamp is None else p.timestamp)
        for p in points
    ]
    latest: dict[str, Row] = {}
    for row in rows:
        current = latest.get(row[1])
        # the latest point: highest step, then newest timestamp, then largest value
        if current is None or (row[3], row[4], row[2]) > (current[3], current[4], current[2]):
            latest[row[1]] = row
    _insert_history(session, rows)
    _upsert_latest(session, [latest[key] for key in sorted(latest)])
    return len(rows)


def _insert_history(session: Session, rows: list[Row]) -> None:
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        columns = ("run_id", "key", "value", "step", "timestamp")
        session.execute(insert(METRIC), [dict(zip(columns, r, strict=True)) for r in rows])
        return
    driver = connection.connection.driver_connection
    assert driver is not None
    # Text COPY built in one string: keys match [A-Za-z0-9_-./: ] (no tab, newline or
    # backslash) and values are finite floats, so nothing needs escaping.
    text = "".join(f"{r[0]}\t{r[1]}\t{r[2]!r}\t{r[3]}\t{r[4]}\n" for r in rows)
    with driver.cursor() as cursor, cursor.copy(COPY_SQL) as copy:
        copy.write(text)


def _upsert_statement(dialect: str) -> Any:
    """Built once per dialect and executed with many parameter sets, so SQLAlchemy compiles
    it once instead of on every request."""
    stmt = dialect_insert(dialect)(LATEST)
    excluded = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[LATEST.c.run_id, LATEST.c.key],
        set_={"value": excluded.value, "step": excluded.step, "timestamp": excluded.timestamp},
        where=tuple_(LATEST.c.step, LATEST.c.timestamp, LATEST.c.value)
        < tuple_(excluded.step, excluded.timestamp, excluded.value),
    )


UPSERTS = {name: _upsert_statement(name) for name in ("postgresql", "sqlite")}


def _upsert_latest(session: Session, rows: list[Row]) -> None:
    params = [
        {"run_id": r[0], "key": r[1], "value": r[2], "step": r[3], "timestamp": r[4]} for r in rows
    ]
    session.execute(UPSERTS[session.get_bind().dialect.name], params)
