"""Endpoint metrics from the per-minute rollups the gateways write: summing counts and merging
latency histograms answers for days of traffic without touching the prediction log."""

from collections import defaultdict
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.ml import latency
from app.monitoring.models import ServingRollup
from app.monitoring.schemas import EndpointMetrics, LatencySummary, MetricsPoint, VariantSeries
from app.monitoring.windows import Window

MINUTE = timedelta(minutes=1)
SUMMED = (
    "invocations",
    "shadow_invocations",
    "errors_4xx",
    "errors_5xx",
    "total_ms_sum",
    "model_ms_sum",
    "overhead_ms_sum",
    "cold_starts",
    "cold_start_ms_sum",
)


def endpoint_metrics(
    session: Session, deployment: str, span: Window, variant: str | None
) -> EndpointMetrics:
    start = span.start.replace(second=0, microsecond=0)
    span = Window(start, span.end, span.step)
    stmt = select(ServingRollup).where(
        ServingRollup.deployment == deployment,
        ServingRollup.minute >= start,
        ServingRollup.minute < span.end,
    )
    if variant is not None:
        stmt = stmt.where(ServingRollup.variant == variant)
    buckets: dict[tuple[str, Any], list[ServingRollup]] = defaultdict(list)
    for row in session.scalars(stmt):
        buckets[(row.variant, span.bucket(row.minute))].append(row)
    series: dict[str, list[MetricsPoint]] = defaultdict(list)
    for (name, at), rows in sorted(buckets.items(), key=lambda item: (item[0][0], item[0][1])):
        series[name].append(_point(at, rows, span.step))
    return EndpointMetrics(
        deployment=deployment,
        start=span.start,
        end=span.end,
        step_seconds=int(span.step.total_seconds()),
        series=[VariantSeries(variant=name, points=points) for name, points in series.items()],
    )


def _point(at: Any, rows: list[ServingRollup], step: timedelta) -> MetricsPoint:
    sums = {name: sum(getattr(r, name) for r in rows) for name in SUMMED}
    calls = sums["invocations"]
    per_replica: dict[str, int] = defaultdict(int)
    for row in rows:
        for port, count in (row.per_replica or {}).items():
            per_replica[f"{row.gateway}/{port}"] += int(count)
    measured = sum(sum(r.model_ms_hist) for r in rows)
    return MetricsPoint(
        at=at,
        invocations=calls,
        rate_per_second=round(calls / step.total_seconds(), 4),
        shadow_invocations=sums["shadow_invocations"],
        errors_4xx=sums["errors_4xx"],
        errors_5xx=sums["errors_5xx"],
        error_rate=round(sums["errors_5xx"] / calls, 6) if calls else 0.0,
        total_ms=_summary([r.total_ms_hist for r in rows], sums["total_ms_sum"], calls),
        model_ms=_summary([r.model_ms_hist for r in rows], sums["model_ms_sum"], measured),
        overhead_ms=_summary([r.overhead_ms_hist for r in rows], sums["overhead_ms_sum"], measured),
        cold_starts=sums["cold_starts"],
        cold_start_ms_mean=round(sums["cold_start_ms_sum"] / sums["cold_starts"], 1)
        if sums["cold_starts"]
        else None,
        cold_start_ms_max=max((r.cold_start_ms_max for r in rows), default=0.0) or None,
        replicas_max=max(r.replicas_max for r in rows),
        in_flight_max=max(r.in_flight_max for r in rows),
        invocations_per_replica=dict(per_replica),
    )


def _summary(histograms: list[list[int]], total: float, count: int) -> LatencySummary:
    merged = latency.merge(histograms)
    return LatencySummary(
        mean=round(total / count, 3) if count else None,
        p50=latency.quantile(merged, 0.5),
        p95=latency.quantile(merged, 0.95),
        p99=latency.quantile(merged, 0.99),
    )
