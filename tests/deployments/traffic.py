"""Gateway traffic as the gateway records it: observations written through the same
telemetry code path (`Telemetry.observe` → `take` → `write`) the gateway flushes with."""

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import unit_of_work
from app.deployments.models import Deployment, Replica, Variant
from app.serving.telemetry import Observation, Telemetry, write


def record(
    session_factory: sessionmaker[Session],
    deployment: str,
    variant: str,
    count: int,
    *,
    version_id: int | None = None,
    errors: int = 0,
    latency_ms: float = 5.0,
    predictions: Sequence[Any] | None = None,
    request_ids: Sequence[str] | None = None,
    shadow: bool = False,
    rows: Sequence[dict[str, Any]] | None = None,
    probabilities: Sequence[list[float]] | None = None,
) -> list[str]:
    """Each call is its own gateway, so calls add up in the rollups instead of overwriting."""
    telemetry = Telemetry(f"test-{uuid.uuid4().hex[:8]}", session_factory.kw["bind"].dialect)
    if version_id is None:  # the version the variant serves, as the gateway would log it
        with session_factory() as session:
            version_id = session.scalar(
                select(Variant.model_version_id)
                .join(Deployment, Deployment.id == Variant.deployment_id)
                .where(Deployment.name == deployment, Variant.name == variant)
            )
        assert version_id is not None, f"{deployment}/{variant} is not deployed"
    ids = list(request_ids) if request_ids is not None else []
    for i in range(count):
        request_id = ids[i] if i < len(ids) else uuid.uuid4().hex
        if i >= len(ids):
            ids.append(request_id)
        failed = i < errors
        prediction = predictions[i % len(predictions)] if predictions else 1
        telemetry.observe(
            Observation(
                deployment,
                variant,
                version_id,
                request_id,
                500 if failed else 200,
                latency_ms + (i % 5) * 0.1,
                None if failed else latency_ms / 2,
                shadow,
            ),
            inputs={"rows": [rows[i % len(rows)] if rows else {"age": 30}]},
            outputs=None
            if failed
            else {"predictions": [prediction]}
            | ({"probabilities": [probabilities[i % len(probabilities)]]} if probabilities else {}),
        )
    with unit_of_work(session_factory) as session:
        write(session, telemetry.gateway_id, telemetry.take())
    return ids


def ready_replica(
    session_factory: sessionmaker[Session], deployment: str, variant: str, ready_at: datetime
) -> None:
    """A replica of the variant as the gateway reports it once it answered its health check."""
    with unit_of_work(session_factory) as session:
        found = session.execute(
            select(Deployment.id, Variant.model_version_id)
            .join(Variant, Deployment.id == Variant.deployment_id)
            .where(Deployment.name == deployment, Variant.name == variant)
        ).one()
        session.add(
            Replica(
                deployment_id=found.id,
                variant=variant,
                model_version_id=found.model_version_id,
                gateway="test",
                port=1,
                state="ready",
                started_at=ready_at,
                ready_at=ready_at,
            )
        )
