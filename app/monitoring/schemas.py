from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class LatencySummary(BaseModel):
    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None


class MetricsPoint(BaseModel):
    at: datetime = Field(description="Start of the bucket.")
    invocations: int
    rate_per_second: float
    shadow_invocations: int
    errors_4xx: int
    errors_5xx: int
    error_rate: float = Field(description="5xx share of invocations.")
    total_ms: LatencySummary
    model_ms: LatencySummary = Field(description="Measured inside the replica.")
    overhead_ms: LatencySummary = Field(description="Total minus model: the gateway's share.")
    cold_starts: int
    cold_start_ms_mean: float | None
    cold_start_ms_max: float | None
    replicas_max: int
    in_flight_max: int
    invocations_per_replica: dict[str, int]


class VariantSeries(BaseModel):
    variant: str
    points: list[MetricsPoint]


class EndpointMetrics(BaseModel):
    deployment: str
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    step_seconds: int
    series: list[VariantSeries] = Field(description="Buckets with traffic only.")


class PerformancePoint(BaseModel):
    at: datetime
    variant: str
    labelled: int = Field(description="Labelled predictions behind this point.")
    metrics: dict[str, float | None]


class Performance(BaseModel):
    deployment: str
    kind: str = Field(description="classification or regression")
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    step_seconds: int
    points: list[PerformancePoint]


class GroupRead(BaseModel):
    group: str
    count: int
    labelled: int
    selection_rate: float | None
    tpr: float | None
    fpr: float | None


class Fairness(BaseModel):
    deployment: str
    attribute: str
    positive: Any
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    groups: list[GroupRead]
    min_group_size: int
    judged_groups: list[str]
    demographic_parity_difference: float | None
    demographic_parity_ratio: float | None
    equalized_odds_difference: float | None
    four_fifths_rule_passed: bool | None
    verdict: str = Field(description="passed, failed or insufficient_data")
