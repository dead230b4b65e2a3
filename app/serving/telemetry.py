"""What the gateway measures, kept off the request path: Prometheus metrics (scraped from the
gateway's `/metrics`), per-minute rollups per variant, prediction logs and replica state.

Requests only touch memory here; a flush every second writes the pending logs, rewrites the
rollup rows of the minutes that changed and replaces this gateway's replica rows, in one
transaction on a worker thread. A log row is made ready for the driver when its request is
seen (a tuple, JSON as text, the timestamp as the column stores it): work left to the flush
runs in one burst that holds the GIL against the event loop, and shows in the tail latency."""

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from sqlalchemy import Dialect, delete, insert
from sqlalchemy.orm import Session

from app.core.db import upsert
from app.deployments.models import Replica
from app.ml import latency
from app.monitoring.models import PredictionLog, ServingRollup

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
COLD_START_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60)
LOG_CAPACITY = 20_000
KEEP_MINUTES = timedelta(minutes=2)
LOG_COLUMNS = (
    "request_id",
    "deployment",
    "variant",
    "model_version_id",
    "shadow",
    "status",
    "total_ms",
    "model_ms",
    "inputs",
    "outputs",
    "created_at",
)


# one encoder for every request: json.dumps builds a new one per call when given options
_STRICT_JSON = json.JSONEncoder(allow_nan=False)


def json_text(value: Any) -> str | None:
    """A logged document as JSON text, encoded when the request is seen, on the event loop,
    so the flush thread only binds strings (encoding there held the GIL in long stretches that
    stalled requests). Bytes are a request body as received: it parsed as JSON, so it is kept
    as it is. NaN and infinities, which requests may send as missing values, become null:
    PostgreSQL's json refuses them, and one such row failed a whole second of logs."""
    if value is None:
        return None
    if isinstance(value, bytes):
        if b"NaN" not in value and b"Infinity" not in value:
            return value.decode()
        value = json.loads(value)
    try:
        return _STRICT_JSON.encode(value)
    except ValueError:
        return json.dumps(_finite(value))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def sampled(request_id: str, rate: float) -> bool:
    """Decided by the request id, so a request's live and shadow rows are kept together."""
    if rate >= 1:
        return True
    point = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=4).digest(), "big")
    return point / 2**32 < rate


@dataclass
class MinuteCounts:
    invocations: int = 0
    shadow_invocations: int = 0
    errors_4xx: int = 0
    errors_5xx: int = 0
    total_ms_sum: float = 0.0
    model_ms_sum: float = 0.0
    overhead_ms_sum: float = 0.0
    total_ms_hist: list[int] = field(default_factory=latency.empty)
    model_ms_hist: list[int] = field(default_factory=latency.empty)
    overhead_ms_hist: list[int] = field(default_factory=latency.empty)
    cold_starts: int = 0
    cold_start_ms_sum: float = 0.0
    cold_start_ms_max: float = 0.0
    replicas_max: int = 0
    in_flight_max: int = 0
    per_replica: dict[str, int] = field(default_factory=dict)


@dataclass
class Observation:
    deployment: str
    variant: str
    version_id: int
    request_id: str
    status: int
    total_ms: float
    model_ms: float | None
    shadow: bool = False
    replica: int | None = None


@dataclass
class Pending:
    logs: list[tuple[Any, ...]]  # in LOG_COLUMNS order, ready for the driver
    rollups: list[dict[str, Any]]
    replicas: list[dict[str, Any]] | None


class Telemetry:
    def __init__(self, gateway_id: str, dialect: Dialect, log_capacity: int = LOG_CAPACITY) -> None:
        """`dialect`: the database's the logs are written to (a log's time is kept as its
        column stores it there)."""
        self.gateway_id = gateway_id
        self.log_capacity = log_capacity
        self.stamp = created_at_stamp(dialect)
        self.minutes: dict[tuple[str, str, datetime], MinuteCounts] = {}
        self.dirty: set[tuple[str, str, datetime]] = set()
        self.logs: list[tuple[Any, ...]] = []
        self.dropped: Counter[str] = Counter()
        self.replica_rows: list[dict[str, Any]] | None = None
        self._minute_start, self._minute_ends = datetime.fromtimestamp(0, UTC), 0.0
        self._children: dict[tuple[Any, ...], Any] = {}
        self.registry = CollectorRegistry()
        labels = ["deployment", "variant"]
        self.requests = PromCounter(
            "flywheel_gateway_requests",
            "Requests answered, by class of status code (shadow copies counted apart).",
            [*labels, "code", "shadow"],
            registry=self.registry,
        )
        self.replica_requests = PromCounter(
            "flywheel_gateway_replica_requests",
            "Requests each replica served.",
            [*labels, "replica"],
            registry=self.registry,
        )
        self.total_seconds = Histogram(
            "flywheel_gateway_request_seconds",
            "Total latency seen by the gateway.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "flywheel_gateway_model_seconds",
            "Latency measured inside the replica.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.overhead_seconds = Histogram(
            "flywheel_gateway_overhead_seconds",
            "Total minus model latency: routing, validation, transport.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cold_start_seconds = Histogram(
            "flywheel_gateway_cold_start_seconds",
            "Replica launch time, spawn to ready.",
            labels,
            buckets=COLD_START_BUCKETS,
            registry=self.registry,
        )
        self.replicas_gauge = Gauge(
            "flywheel_gateway_replicas",
            "Replicas by state.",
            [*labels, "state"],
            registry=self.registry,
        )
        self.in_flight_gauge = Gauge(
            "flywheel_gateway_in_flight",
            "Requests in flight, including those waiting for a replica.",
            labels,
            registry=self.registry,
        )
        self.logs_dropped = PromCounter(
            "flywheel_gateway_prediction_logs_dropped",
            "Prediction logs dropped because the write queue was full.",
            ["deployment"],
            registry=self.registry,
        )

    def _minute(self, deployment: str, variant: str) -> MinuteCounts:
        now = time.time()
        if now >= self._minute_ends:  # a datetime per minute, not per request
            start = now // 60 * 60
            self._minute_start = datetime.fromtimestamp(start, UTC)
            self._minute_ends = start + 60
        key = (deployment, variant, self._minute_start)
        self.dirty.add(key)
        counts = self.minutes.get(key)
        if counts is None:
            counts = self.minutes[key] = MinuteCounts()
        return counts

    def observe(
        self, seen: Observation, inputs: Any = None, outputs: Any = None, sample_rate: float = 1.0
    ) -> None:
        """`inputs` and `outputs`: JSON values, or a JSON body's bytes as received."""
        code = f"{seen.status // 100}xx"
        names = (seen.deployment, seen.variant)
        self._child(self.requests, *names, code, "true" if seen.shadow else "false").inc()
        counts = self._minute(seen.deployment, seen.variant)
        if seen.shadow:
            counts.shadow_invocations += 1
        else:
            counts.invocations += 1
            counts.errors_4xx += 400 <= seen.status < 500
            counts.errors_5xx += seen.status >= 500
            counts.total_ms_sum += seen.total_ms
            latency.add(counts.total_ms_hist, seen.total_ms)
            self._child(self.total_seconds, *names).observe(seen.total_ms / 1000)
            if seen.model_ms is not None:
                overhead = max(seen.total_ms - seen.model_ms, 0.0)
                counts.model_ms_sum += seen.model_ms
                counts.overhead_ms_sum += overhead
                latency.add(counts.model_ms_hist, seen.model_ms)
                latency.add(counts.overhead_ms_hist, overhead)
                self._child(self.model_seconds, *names).observe(seen.model_ms / 1000)
                self._child(self.overhead_seconds, *names).observe(overhead / 1000)
        if seen.replica is not None:
            port = str(seen.replica)
            counts.per_replica[port] = counts.per_replica.get(port, 0) + 1
            self._child(self.replica_requests, *names, port).inc()
        if not sampled(seen.request_id, sample_rate):
            return
        if len(self.logs) >= self.log_capacity:
            self.dropped[seen.deployment] += 1
            self.logs_dropped.labels(seen.deployment).inc()
            return
        self.logs.append(
            (
                seen.request_id,
                seen.deployment,
                seen.variant,
                seen.version_id,
                seen.shadow,
                seen.status,
                round(seen.total_ms, 3),
                seen.model_ms,
                json_text(inputs),
                json_text(outputs),
                self.stamp(datetime.now(UTC)),
            )
        )

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(...)`, remembered: its lookup under a lock was 2% of the gateway."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def cold_start(self, deployment: str, variant: str, seconds: float) -> None:
        counts = self._minute(deployment, variant)
        counts.cold_starts += 1
        counts.cold_start_ms_sum += seconds * 1000
        counts.cold_start_ms_max = max(counts.cold_start_ms_max, seconds * 1000)
        self.cold_start_seconds.labels(deployment, variant).observe(seconds)

    def load(
        self, deployment: str, variant: str, ready: int, starting: int, in_flight: int
    ) -> None:
        counts = self._minute(deployment, variant)
        counts.replicas_max = max(counts.replicas_max, ready + starting)
        counts.in_flight_max = max(counts.in_flight_max, in_flight)
        self.replicas_gauge.labels(deployment, variant, "ready").set(ready)
        self.replicas_gauge.labels(deployment, variant, "starting").set(starting)
        self.in_flight_gauge.labels(deployment, variant).set(in_flight)

    def forget(self, deployment: str, variant: str) -> None:
        """A variant no longer served: its gauges would otherwise report stale replicas."""
        for state in ("ready", "starting"):
            self.replicas_gauge.labels(deployment, variant, state).set(0)
        self.in_flight_gauge.labels(deployment, variant).set(0)

    def take(self) -> Pending:
        """Swap out what is pending; the caller writes it (off the event loop)."""
        logs, self.logs = self.logs, []
        rollups = []
        for key in self.dirty:
            deployment, variant, minute = key
            counts = self.minutes[key]
            rollups.append(
                {
                    "deployment": deployment,
                    "variant": variant,
                    "minute": minute,
                    "gateway": self.gateway_id,
                    **{name: _copy(value) for name, value in vars(counts).items()},
                }
            )
        self.dirty.clear()
        horizon = datetime.now(UTC) - KEEP_MINUTES
        for key in [k for k in self.minutes if k[2] < horizon]:
            del self.minutes[key]
        replicas, self.replica_rows = self.replica_rows, None
        return Pending(logs, rollups, replicas)


def created_at_stamp(dialect: Dialect) -> Callable[[datetime], Any]:
    """The column type's own conversion (on SQLite, SQLAlchemy's text format, which queries
    compare as text): what the ORM would bind for a prediction log's time."""
    column_type = PredictionLog.__table__.c.created_at.type
    convert = column_type.dialect_impl(dialect).bind_processor(dialect)
    return convert if convert is not None else lambda at: at


def _log_insert(dialect: Dialect) -> str:
    """Plain SQL for the driver's executemany: SQLAlchemy's per-row parameter processing cost
    more than the insert itself. Inputs and outputs arrive as JSON text (cast to json on
    PostgreSQL; on SQLite a JSON column is text already)."""
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    documents = {"inputs", "outputs"} if dialect.name == "postgresql" else set()
    values = [f"CAST({mark} AS JSON)" if name in documents else mark for name in LOG_COLUMNS]
    columns, table = ", ".join(LOG_COLUMNS), PredictionLog.__tablename__
    return f"INSERT INTO {table} ({columns}) VALUES ({', '.join(values)})"  # noqa: S608 - names are constants


def _copy(value: Any) -> Any:
    return (
        list(value)
        if isinstance(value, list)
        else dict(value)
        if isinstance(value, dict)
        else value
    )


def write(session: Session, gateway_id: str, pending: Pending) -> None:
    if pending.logs:
        connection = session.connection()
        connection.exec_driver_sql(_log_insert(connection.dialect), pending.logs)
    if pending.rollups:
        keys = ["deployment", "variant", "minute", "gateway"]
        columns = [k for k in pending.rollups[0] if k not in keys]
        upsert(session, ServingRollup, pending.rollups, keys, columns)
    if pending.replicas is not None:
        session.execute(delete(Replica).where(Replica.gateway == gateway_id))
        if pending.replicas:
            session.execute(insert(Replica), pending.replicas)
