"""Traffic decisions, pure and deterministic where they must be: which variant serves a
request (weighted, sticky by a hash of the unit key) and which replica takes it."""

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Replica:
    port: int
    ready: bool = False
    in_flight: int = 0
    served: int = 0
    started_at: float = 0.0
    ready_at: float | None = None
    pid: int | None = None


@dataclass
class Lane:
    """One variant of a deployment as the gateway serves it."""

    name: str
    weight: int
    mode: str
    version_id: int
    version: int
    model: str
    signature: dict[str, object]
    mirror: bool = False  # also gets a copy of the other live variants' requests (rollouts)
    retired: bool = False  # no longer desired: finishes what it holds, takes nothing new
    replicas: list[Replica] = field(default_factory=list)
    requests: int = 0
    waiting: int = 0  # requests held while a replica starts: load the scaler must see
    cold_starts: list[float] = field(default_factory=list)
    decisions: list[dict[str, object]] = field(default_factory=list)


def bucket(deployment: str, unit: str) -> float:
    """A stable point in [0, 100) for a unit: the same user lands in the same variant."""
    digest = hashlib.sha256(f"{deployment}\x00{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 1_000_000 / 10_000


def choose(deployment: str, lanes: Sequence[Lane], unit: str | None, rng: random.Random) -> Lane:
    live = [lane for lane in lanes if lane.mode == "live" and lane.weight > 0]
    point = bucket(deployment, unit) if unit is not None else rng.random() * 100
    edge = 0.0
    for lane in live:
        edge += lane.weight
        if point < edge:
            return lane
    return live[-1]


def stand_in(
    deployment: str, lanes: Sequence[Lane], unit: str | None, rng: random.Random
) -> Lane | None:
    """The variant to take a request its chosen variant could not serve (retired while the
    request waited, or no replica came up): a live, weighted, not retired one, preferring
    those with a ready replica, by the same sticky choice; None when no variant can."""
    serving = [lane for lane in lanes if lane.mode == "live" and lane.weight > 0]
    serving = [lane for lane in serving if not lane.retired]
    ready = [lane for lane in serving if any(r.ready for r in lane.replicas)]
    pool = ready or serving
    return choose(deployment, pool, unit, rng) if pool else None


def least_outstanding(replicas: Sequence[Replica], rng: random.Random) -> Replica | None:
    ready = [r for r in replicas if r.ready]
    if not ready:
        return None
    fewest = min(r.in_flight for r in ready)
    return rng.choice([r for r in ready if r.in_flight == fewest])
