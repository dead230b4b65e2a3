"""The gateway's telemetry without HTTP: what a flush writes, what a full queue drops."""

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import unit_of_work
from app.monitoring.models import PredictionLog, ServingRollup
from app.serving.data_plane import new_request_id
from app.serving.telemetry import Observation, Telemetry, sampled, write


def telemetry_for(
    gateway_id: str, session_factory: sessionmaker[Session], **options: Any
) -> Telemetry:
    return Telemetry(gateway_id, session_factory.kw["bind"].dialect, **options)


def flush(telemetry: Telemetry, session_factory: sessionmaker[Session]) -> None:
    with unit_of_work(session_factory) as session:
        write(session, telemetry.gateway_id, telemetry.take())


def test_a_refused_request_without_inputs_is_logged_and_counted_as_4xx(
    session_factory: sessionmaker[Session],
) -> None:
    telemetry = telemetry_for("g1", session_factory)
    telemetry.observe(Observation("d", "v", 1, "bad", 422, 0.4, None), inputs=None)
    telemetry.observe(
        Observation("d", "v", 1, "ok", 200, 3.0, 1.0, replica=9001),
        inputs={"rows": [{"a": 1}]},
        outputs={"predictions": [1]},
    )
    flush(telemetry, session_factory)
    telemetry.observe(Observation("d", "v", 1, "ok2", 200, 5.0, 2.0, replica=9001))
    flush(telemetry, session_factory)  # the same minute's row is rewritten, not added to
    with session_factory() as session:
        logs = session.scalars(select(PredictionLog).order_by(PredictionLog.id)).all()
        assert [(r.request_id, r.status, r.inputs) for r in logs] == [
            ("bad", 422, None),
            ("ok", 200, {"rows": [{"a": 1}]}),
            ("ok2", 200, None),
        ]
        [rollup] = session.scalars(select(ServingRollup)).all()
        assert (rollup.invocations, rollup.errors_4xx, rollup.errors_5xx) == (3, 1, 0)
        assert rollup.model_ms_sum == 3.0 and rollup.overhead_ms_sum == 5.0
        assert rollup.per_replica == {"9001": 2} and sum(rollup.total_ms_hist) == 3


def test_a_full_queue_drops_and_counts_instead_of_growing(
    session_factory: sessionmaker[Session],
) -> None:
    telemetry = telemetry_for("g2", session_factory, log_capacity=5)
    for i in range(8):
        telemetry.observe(Observation("d", "v", 1, f"r{i}", 200, 1.0, 0.5))
    assert len(telemetry.logs) == 5 and telemetry.dropped["d"] == 3
    flush(telemetry, session_factory)
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(PredictionLog)) == 5
        assert session.scalar(select(ServingRollup.invocations)) == 8  # counts are never dropped


def test_sampling_is_decided_by_request_id() -> None:
    kept = [sampled(f"request-{i}", 0.2) for i in range(5000)]
    assert 0.17 < sum(kept) / 5000 < 0.23
    assert kept == [sampled(f"request-{i}", 0.2) for i in range(5000)]  # live and shadow agree
    assert all(sampled(f"request-{i}", 1.0) for i in range(10))


def test_missing_values_sent_as_nan_do_not_fail_the_flush(
    session_factory: sessionmaker[Session],
) -> None:
    """NaN is a missing value to the model but not JSON to PostgreSQL: one such request made
    the whole second's insert fail, losing every log and rollup in it."""
    telemetry = telemetry_for("g3", session_factory)
    telemetry.observe(
        Observation("d", "v", 1, "nan", 200, 2.0, 1.0),
        inputs={"rows": [{"a": float("nan"), "b": [float("inf"), 1.5]}]},
        outputs={"predictions": [0]},
    )
    raw = b'{"rows": [{"a": NaN, "b": 2}]}'
    telemetry.observe(
        Observation("d", "v", 1, "raw-nan", 200, 2.0, 1.0), inputs=raw, outputs={"p": [1]}
    )
    telemetry.observe(
        Observation("d", "v", 1, "raw", 200, 2.0, 1.0), inputs=b'{"rows": [{"a": "\xc3\xa9"}]}'
    )
    flush(telemetry, session_factory)
    with session_factory() as session:
        logs = session.execute(
            select(PredictionLog.request_id, PredictionLog.inputs, PredictionLog.outputs).order_by(
                PredictionLog.id
            )
        ).all()
    assert [tuple(row) for row in logs] == [
        ("nan", {"rows": [{"a": None, "b": [None, 1.5]}]}, {"predictions": [0]}),
        ("raw-nan", {"rows": [{"a": None, "b": 2}]}, {"p": [1]}),
        ("raw", {"rows": [{"a": "é"}]}, None),
    ]


def test_a_logs_time_is_stored_as_the_orm_stores_it(
    session_factory: sessionmaker[Session],
) -> None:
    """Logs skip SQLAlchemy's per-row processing; their time must still compare with times
    the ORM binds (on SQLite, as text in SQLAlchemy's format)."""
    telemetry = telemetry_for("g4", session_factory)
    before = datetime.now(UTC)
    telemetry.observe(Observation("d", "v", 1, "timed", 200, 2.0, 1.0))
    after = datetime.now(UTC)
    flush(telemetry, session_factory)
    with unit_of_work(session_factory) as session:
        fields = {"deployment": "d", "variant": "v", "model_version_id": 1, "total_ms": 1.0}
        session.add(PredictionLog(request_id="orm", status=200, created_at=after, **fields))
    with session_factory() as session:
        window = PredictionLog.created_at.between(before, after)
        [logged] = session.scalars(select(PredictionLog).where(window).limit(1)).all()
        assert logged.request_id == "timed"
        assert logged.created_at.tzinfo is not None and before <= logged.created_at <= after
        query = text("SELECT request_id, created_at FROM prediction_log")
        stored = dict(session.execute(query).all())
    assert type(stored["timed"]) is type(stored["orm"])
    if isinstance(stored["orm"], str):  # SQLite: the same text format, zone and all
        assert len(stored["timed"]) == len(stored["orm"]), stored


def test_request_ids_are_unique_and_ordered_by_time() -> None:
    """Ordered ids keep inserts into the request-id index at its end (random ones cost 5x per
    insert at half a million logged rows)."""
    first = [new_request_id() for _ in range(5000)]
    time.sleep(0.002)
    later = new_request_id()
    assert len(set(first)) == 5000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in first)
    assert later > max(first)
    assert int(later[:12], 16) == pytest.approx(time.time() * 1000, abs=1000)
