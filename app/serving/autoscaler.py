"""How many replicas a variant should have: in-flight requests per replica, averaged over a
window, against the target; clamped to min/max; stabilized so it does not flap (scale up at
once or after a short window, scale down only when every recommendation in the longer window
agrees); zero after a stretch of idleness when the deployment allows it. Pure: the gateway
feeds it samples and applies its decisions."""

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Decision:
    current: int
    desired: int
    average_in_flight: float
    reason: str


@dataclass
class Autoscaler:
    min_replicas: int
    max_replicas: int
    target_in_flight: float
    window_seconds: float
    scale_up_stabilization_seconds: float
    scale_down_stabilization_seconds: float
    scale_to_zero_after_seconds: float | None
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    last_request_at: float | None = None

    @classmethod
    def from_policy(cls, policy: dict[str, Any]) -> "Autoscaler":
        keys = (
            "min_replicas",
            "max_replicas",
            "target_in_flight",
            "window_seconds",
            "scale_up_stabilization_seconds",
            "scale_down_stabilization_seconds",
            "scale_to_zero_after_seconds",
        )
        return cls(**{key: policy[key] for key in keys})

    def observe(self, now: float, in_flight: float, requested: bool) -> None:
        self.samples.append((now, in_flight))
        while self.samples and self.samples[0][0] < now - self.window_seconds:
            self.samples.popleft()
        if requested or self.last_request_at is None:  # idleness counts from the first look
            self.last_request_at = now

    def decide(self, now: float, current: int) -> Decision:
        average = sum(v for _, v in self.samples) / len(self.samples) if self.samples else 0.0
        idle_for = math.inf if self.last_request_at is None else now - self.last_request_at
        to_zero = self.scale_to_zero_after_seconds
        if to_zero is not None and idle_for >= to_zero and average == 0:
            return Decision(current, 0, average, f"no requests for {to_zero:g} s")
        raw = math.ceil(average / self.target_in_flight) if average > 0 else 0
        # once up, one replica stays until the idle rule above takes it to zero; once at zero,
        # the next request (not the scaler) starts one
        floor = max(self.min_replicas, 1 if current > 0 or average > 0 else 0)
        wanted = min(self.max_replicas, max(floor, raw))
        self.recommendations.append((now, wanted))
        horizon = max(self.scale_up_stabilization_seconds, self.scale_down_stabilization_seconds)
        while self.recommendations and self.recommendations[0][0] < now - horizon:
            self.recommendations.popleft()
        if wanted > current:
            recent = [
                r for t, r in self.recommendations if t >= now - self.scale_up_stabilization_seconds
            ]
            desired = max(current, min(recent)) if recent else wanted
            reason = (
                f"average in-flight {average:.2f} over target {self.target_in_flight:g} per replica"
            )
        elif wanted < current:
            recent = [
                r
                for t, r in self.recommendations
                if t >= now - self.scale_down_stabilization_seconds
            ]
            desired = min(current, max(recent)) if recent else wanted
            reason = f"average in-flight {average:.2f}; scale down held by the stabilization window"
            if desired < current:
                reason = (
                    f"average in-flight {average:.2f} under target for the stabilization window"
                )
        else:
            desired, reason = current, "at the target"
        return Decision(current, desired, average, reason)
