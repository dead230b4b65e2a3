"""Queries over what the gateway logged: the numbers rollout guardrails and A/B tests judge."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import and_, select
from sqlalchemy.orm import Session, aliased

from app.monitoring.models import Feedback, PredictionLog


@dataclass(frozen=True)
class VariantWindow:
    requests: int
    errors: int
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def variant_window(
    session: Session,
    deployment: str,
    variant: str,
    since: datetime,
    latency_since: datetime | None = None,
) -> VariantWindow:
    """Live requests a variant answered since a moment: count, 5xx, p99 of total latency
    (from `latency_since` when given: requests held while a replica cold-starts are
    counted as cold starts, not as the model's latency)."""
    rows = session.execute(
        select(PredictionLog.status, PredictionLog.total_ms, PredictionLog.created_at).where(
            PredictionLog.deployment == deployment,
            PredictionLog.variant == variant,
            PredictionLog.shadow.is_(False),
            PredictionLog.created_at >= since,
        )
    ).all()
    start = latency_since or since
    latencies = [  # a log is written when the answer leaves: it arrived total_ms earlier
        r.total_ms
        for r in rows
        if r.status < 500 and r.created_at - timedelta(milliseconds=r.total_ms) >= start
    ]
    return VariantWindow(
        requests=len(rows),
        errors=sum(r.status >= 500 for r in rows),
        p99_ms=round(float(np.quantile(latencies, 0.99)), 3) if latencies else None,
    )


def disagreement(
    session: Session, deployment: str, baseline: str, candidate: str, since: datetime
) -> tuple[int, int]:
    """(pairs, differing): requests the baseline answered live and the candidate answered as
    a mirrored copy, and how many of those got different predictions."""
    mirrored = aliased(PredictionLog)
    rows = session.execute(
        select(PredictionLog.outputs, mirrored.outputs.label("mirrored"))
        .join(
            mirrored,
            and_(
                mirrored.request_id == PredictionLog.request_id,
                mirrored.deployment == PredictionLog.deployment,
                mirrored.variant == candidate,
                mirrored.shadow.is_(True),
                mirrored.status == 200,
            ),
        )
        .where(
            PredictionLog.deployment == deployment,
            PredictionLog.variant == baseline,
            PredictionLog.shadow.is_(False),
            PredictionLog.status == 200,
            PredictionLog.created_at >= since,
        )
    ).all()
    differing = sum(_predictions(r.outputs) != _predictions(r.mirrored) for r in rows)
    return len(rows), differing


def _predictions(outputs: Any) -> list[Any]:
    values = outputs.get("predictions", []) if isinstance(outputs, dict) else []
    return [round(v, 6) if isinstance(v, float) else v for v in values]


def labelled(
    session: Session, deployment: str, variant: str, since: datetime, until: datetime | None
) -> list[tuple[Any, Any, float | None]]:
    """(predictions, labels, reward) of a variant's answered live requests that got feedback."""
    stmt = (
        select(PredictionLog.outputs, Feedback.labels, Feedback.reward)
        .join(
            Feedback,
            and_(
                Feedback.deployment == PredictionLog.deployment,
                Feedback.request_id == PredictionLog.request_id,
            ),
        )
        .where(
            PredictionLog.deployment == deployment,
            PredictionLog.variant == variant,
            PredictionLog.shadow.is_(False),
            PredictionLog.status == 200,
            PredictionLog.created_at >= since,
        )
    )
    if until is not None:
        stmt = stmt.where(PredictionLog.created_at <= until)
    return [(_predictions(r.outputs), r.labels, r.reward) for r in session.execute(stmt).all()]


def answering_versions(
    session: Session, deployment: str, request_ids: list[str]
) -> dict[str, set[int]]:
    """The model versions that answered each of these requests (live and shadow), for the
    request ids already in the prediction log."""
    found: dict[str, set[int]] = {}
    for start in range(0, len(request_ids), 1000):
        chunk = request_ids[start : start + 1000]
        for request_id, version_id in session.execute(
            select(PredictionLog.request_id, PredictionLog.model_version_id).where(
                PredictionLog.deployment == deployment, PredictionLog.request_id.in_(chunk)
            )
        ):
            found.setdefault(request_id, set()).add(version_id)
    return found
