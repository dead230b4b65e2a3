from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from app.core.pagination import Page


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
    ignored: int = Field(
        description="Labelled requests left out: labels that do not line up with the rows "
        "answered, or that the model cannot predict (not one of its classes; not a number)."
    )


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


class AlertRuleCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, examples=["p99 over 200 ms"])
    deployment: str = Field(max_length=63)
    metric: Literal[
        "latency_p50_ms",
        "latency_p95_ms",
        "latency_p99_ms",
        "overhead_p99_ms",
        "error_rate",
        "request_rate",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "roc_auc",
        "rmse",
        "mae",
        "r2",
        "parity_ratio",
        "parity_difference",
        "dataset_drift",
        "drifted_share",
        "feature_drift",
        "attribution_ndcg",
    ]
    operator: Literal[">", ">=", "<", "<="]
    threshold: float = Field(allow_inf_nan=False)
    window: str = Field(default="5m", max_length=20, description="e.g. 5m, 1h, 7d")
    for_seconds: int = Field(default=0, ge=0, le=86400 * 7, description="How long it must hold.")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="variant; attribute/positive/min_group_size (fairness); feature "
        "(feature_drift); min_samples (quality, default 30); k (attribution_ndcg)",
    )


class AlertRuleUpdate(BaseModel):
    """Only the fields sent change. `params: null` clears the params; the other fields
    always have a value, so null is refused there (leave the field out to keep it)."""

    name: str | SkipJsonSchema[None] = Field(default=None, min_length=1, max_length=100)
    threshold: float | SkipJsonSchema[None] = Field(default=None, allow_inf_nan=False)
    window: str | SkipJsonSchema[None] = Field(default=None, max_length=20)
    for_seconds: int | SkipJsonSchema[None] = Field(default=None, ge=0, le=86400 * 7)
    params: dict[str, Any] | None = Field(default=None, description="null clears them")
    active: bool | SkipJsonSchema[None] = None

    @field_validator("name", "threshold", "window", "for_seconds", "active", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null; leave the field out to keep its current value")
        return value


class AlertRuleRead(BaseModel):
    id: int
    name: str
    deployment: str
    metric: str
    operator: str
    threshold: float
    window: str
    for_seconds: int
    params: dict[str, Any]
    active: bool
    state: str = Field(
        description="ok, pending, firing, or error: the rule cannot be evaluated (see `error`)"
    )
    error: str | None = Field(description="Why the last evaluation failed (state error).")
    pending_since: datetime | None
    last_value: float | None
    last_evaluated_at: datetime | None
    created_by: str | None
    created_at: datetime


class AlertRulePage(Page[AlertRuleRead]):
    pass


class AlertRead(BaseModel):
    id: int
    rule_id: int
    deployment: str
    state: str = Field(
        description="firing, error (the rule cannot be evaluated; the message says why) or resolved"
    )
    value: float | None
    threshold: float
    message: str
    started_at: datetime
    resolved_at: datetime | None


class AlertPage(Page[AlertRead]):
    pass


DriftMethod = Literal["ks", "chisquare", "psi", "jensenshannon", "wasserstein"]


class DriftOptions(BaseModel):
    share: float = Field(
        default=0.5, gt=0, le=1, description="Dataset drift when at least this share drifts."
    )
    numeric_method: DriftMethod | None = Field(
        default=None, description="Default: KS up to 1,000 values, normalized Wasserstein above."
    )
    categorical_method: DriftMethod | None = Field(
        default=None, description="Default: chi-squared up to 1,000 values, Jensen-Shannon above."
    )
    methods: dict[str, DriftMethod] = Field(default_factory=dict, description="Per feature.")
    thresholds: dict[DriftMethod, float] = Field(
        default_factory=dict, description="Per method: p-value below, or distance at or above."
    )
    feature_thresholds: dict[str, float] = Field(default_factory=dict)


class DriftReportCreate(DriftOptions):
    window: str = Field(default="24h", max_length=20, description="The last window of traffic.")
    variant: str | None = Field(default=None, description="Default: the main live variant.")


class DriftReportRead(BaseModel):
    id: int
    deployment: str
    variant: str | None
    model_version_id: int
    window_start: datetime
    window_end: datetime
    options: dict[str, Any]
    status: str = Field(
        description="pending, ready, failed, or insufficient_data: the window had fewer rows "
        "than a verdict needs (FLYWHEEL_DRIFT_MIN_ROWS); no verdict, no drift event"
    )
    trigger: str
    dataset_drifted: bool | None
    drifted_share: float | None
    sampled: bool | None = Field(
        default=None,
        description="The window held more logged requests than a report reads "
        "(FLYWHEEL_DRIFT_MAX_ROWS): the newest were judged.",
    )
    requests_read: int | None = Field(default=None, description="Logged requests judged.")
    requests_in_window: int | None = Field(
        default=None, description="Logged requests the window holds."
    )
    result: dict[str, Any] | None = Field(
        description="Per feature: method, statistic, p_value, threshold, drifted, and both "
        "histograms (bins, reference_counts, current_counts); plus `prediction`; "
        "`current_rows` and `min_rows`; `window` (sampled, requests_read, requests_in_window, "
        "max_requests)."
    )
    error: str | None
    created_by: str | None
    created_at: datetime
    finished_at: datetime | None


class DriftReportPage(Page[DriftReportRead]):
    pass


class DriftScheduleWrite(DriftOptions):
    cron: str = Field(max_length=100, examples=["0 * * * *"])
    window: str = Field(default="24h", max_length=20)


class DriftScheduleRead(BaseModel):
    cron: str
    window: str
    options: dict[str, Any]
    next_run_at: datetime
