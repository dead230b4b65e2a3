"""Gateway traffic as the gateway records it: observations written through the same
telemetry code path (`Telemetry.observe` → `take` → `write`) the gateway flushes with."""

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.core.db import unit_of_work
from app.serving.telemetry import Observation, Telemetry, write


def record(
    session_factory: sessionmaker[Session],
    deployment: str,
    variant: str,
    count: int,
    *,
    version_id: int = 1,
    errors: int = 0,
    latency_ms: float = 5.0,
    predictions: Sequence[Any] | None = None,
    request_ids: Sequence[str] | None = None,
    shadow: bool = False,
) -> list[str]:
    telemetry = Telemetry("test-gateway")
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
            inputs={"rows": [{"age": 30}]},
            outputs=None if failed else {"predictions": [prediction]},
        )
    with unit_of_work(session_factory) as session:
        write(session, telemetry.gateway_id, telemetry.take())
    return ids
