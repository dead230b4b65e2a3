"""What a gateway serves for one deployment, and how it reports it."""

from dataclasses import dataclass, field
from typing import Any

from app.serving.autoscaler import Autoscaler
from app.serving.launcher import ReplicaProcess
from app.serving.routing import Lane


@dataclass
class Answer:
    """What a replica answered (or the gateway in its place), and which replica.
    `unserved`: no replica of the variant could take the request (another variant may)."""

    status: int
    body: dict[str, Any]
    replica: int | None
    unserved: bool = False


@dataclass
class Served:
    id: int
    name: str
    generation: int
    unit_key: str | None
    autoscaling: dict[str, Any]
    log_sample_rate: float
    lanes: list[Lane]
    public: bool = False
    processes: dict[int, ReplicaProcess] = field(default_factory=dict)
    scalers: dict[str, Autoscaler] = field(default_factory=dict)


def describe(served: Served) -> dict[str, Any]:
    return {
        "deployment": served.name,
        "generation": served.generation,
        "variants": [
            {
                "name": lane.name,
                "model": lane.model,
                "model_version": lane.version,
                "weight": lane.weight,
                "mode": lane.mode,
                "mirror": lane.mirror,
                "replicas": [
                    {
                        "port": r.port,
                        "pid": r.pid,
                        "ready": r.ready,
                        "in_flight": r.in_flight,
                        "served": r.served,
                        "cold_start_seconds": None
                        if r.ready_at is None
                        else round(r.ready_at - r.started_at, 3),
                    }
                    for r in lane.replicas
                ],
                "cold_starts_seconds": [round(c, 3) for c in lane.cold_starts],
                "scaling_decisions": lane.decisions[-20:],
            }
            for lane in served.lanes
        ],
    }
