"""Request and response bodies of retraining policies, their evaluations and backtests."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.core.pagination import Page

QualityMetric = Literal["accuracy", "precision", "recall", "f1", "roc_auc", "rmse", "mae", "r2"]
Mode = Literal["scratch", "warm_start", "online"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScheduleTrigger(_Strict):
    cron: str = Field(max_length=100, examples=["0 3 * * 1"], description="Evaluated by beat, UTC.")


class PerformanceTrigger(_Strict):
    """A feedback metric past a threshold over a window, judged on enough labelled rows."""

    metric: QualityMetric
    below: float | None = Field(default=None, allow_inf_nan=False)
    above: float | None = Field(
        default=None, allow_inf_nan=False, description="For error metrics: rmse, mae."
    )
    window: str = Field(default="1h", max_length=20, description="e.g. 30m, 1h, 7d")
    min_samples: int = Field(default=100, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _one_bound(self) -> "PerformanceTrigger":
        if (self.below is None) == (self.above is None):
            raise ValueError("give exactly one of `below` or `above`")
        return self


class DriftTrigger(_Strict):
    """Fires on a drift report the policy has not seen yet: dataset drift, or one of the
    named features drifting."""

    features: list[str] | None = Field(default=None, max_length=200)


class NewDataTrigger(_Strict):
    data_source: str = Field(max_length=100, description="Fires on its next dataset version.")


class Triggers(_Strict):
    schedule: ScheduleTrigger | None = None
    performance: PerformanceTrigger | None = None
    drift: DriftTrigger | None = None
    new_data: NewDataTrigger | None = None


class DataSpec(_Strict):
    """Where the window's rows come from: labelled production traffic (prediction logs
    joined with feedback) or a dataset whose versions carry a time column."""

    source: Literal["production", "dataset"] = "production"
    dataset: str | None = Field(default=None, max_length=250, pattern=NAME_PATTERN)
    time_column: str | None = Field(default=None, max_length=250)
    max_rows: int = Field(default=200_000, ge=100, le=2_000_000)

    @model_validator(mode="after")
    def _dataset_named(self) -> "DataSpec":
        if self.source == "dataset" and not (self.dataset and self.time_column):
            raise ValueError("source 'dataset' needs `dataset` and `time_column`")
        if self.source == "production" and (self.dataset or self.time_column):
            raise ValueError("`dataset` and `time_column` only go with source 'dataset'")
        return self


class TrainingSpec(_Strict):
    """How the retrain fits: from scratch, continued from the champion (warm start), or
    online (new labelled rows applied with partial_fit at a cadence)."""

    mode: Mode = "scratch"
    add_estimators: int | None = Field(default=None, ge=1, le=10_000)
    batch_size: int = Field(default=256, ge=1, le=100_000)
    publish_every: str | None = Field(
        default=None, max_length=20, description="online: how often a new version is published"
    )
    min_rows: int = Field(default=100, ge=1, description="online: fewest new rows to publish")

    @model_validator(mode="after")
    def _consistent(self) -> "TrainingSpec":
        if self.mode == "online" and not self.publish_every:
            raise ValueError("online mode needs `publish_every`, e.g. '10m'")
        if self.mode != "online" and self.publish_every:
            raise ValueError("`publish_every` only goes with mode 'online'")
        if self.add_estimators is not None and self.mode != "warm_start":
            raise ValueError("`add_estimators` only goes with mode 'warm_start'")
        return self


WINDOW_DESCRIPTION = (
    "kind last_n {n, include_original} | period {period: '30d', include_original} | dynamic "
    "{method: adwin|page_hinkley, min_rows, max_rows, params} | representative {n, buckets, seed}"
)


class PolicyCreate(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=NAME_PATTERN)
    deployment: str = Field(max_length=63)
    pipeline: str = Field(max_length=100)
    triggers: Triggers = Field(default_factory=Triggers)
    window: dict[str, Any] = Field(
        default_factory=lambda: {"kind": "last_n", "n": 10_000},
        description=WINDOW_DESCRIPTION,
    )
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    cooldown: str = Field(
        default="1h", max_length=20, description="At most one retrain per cooldown."
    )
    promote: bool = Field(
        default=True,
        description="Roll a blessed challenger out by the deployment's rollout policy; the "
        "champion alias moves when the rollout completes.",
    )
    enabled: bool = True


class PolicyUpdate(_Strict):
    triggers: Triggers | None = None
    window: dict[str, Any] | None = Field(default=None, description=WINDOW_DESCRIPTION)
    data: DataSpec | None = None
    training: TrainingSpec | None = None
    cooldown: str | None = Field(default=None, max_length=20)
    promote: bool | None = None
    enabled: bool | None = None


class RetrainOutcome(BaseModel):
    """How the policy's latest retrain went, with the reason when it did not reach production."""

    evaluation_id: int
    status: str | None = Field(
        description="running, rejected, failed, registered, rolling_out, promoted, rolled_back"
    )
    started_at: datetime
    finished_at: datetime | None
    pipeline_run_id: int | None
    challenger_version: int | None
    reason: str | None = Field(
        description="why it failed, was rejected, rolled back or was not promoted"
    )


class PromoteFailure(BaseModel):
    """A blessed challenger the policy registered but could not roll out (also sent as the
    `retrain.promote_failed` event)."""

    evaluation_id: int
    at: datetime | None
    challenger_version: int | None
    reason: str


class PolicyRead(BaseModel):
    id: int
    name: str
    deployment: str
    pipeline: str
    triggers: dict[str, Any]
    window: dict[str, Any]
    data: dict[str, Any]
    training: dict[str, Any]
    cooldown_seconds: int
    promote: bool
    enabled: bool
    next_schedule_at: datetime | None
    next_online_at: datetime | None
    last_retrain_at: datetime | None
    last_retrain: RetrainOutcome | None = Field(description="the latest retrain's outcome")
    last_promote_failure: PromoteFailure | None = Field(
        description="the latest automatic promotion that failed, and why"
    )
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class TriggerRequest(_Strict):
    """A retrain by hand; the overrides apply to this retrain only."""

    window: dict[str, Any] | None = Field(default=None, description=WINDOW_DESCRIPTION)
    training: TrainingSpec | None = None
    hyperparameters: dict[str, Any] | None = None
    force: bool = Field(default=False, description="Retrain even inside the cooldown.")


class Check(BaseModel):
    trigger: str
    fired: bool
    reason: str
    numbers: dict[str, Any] = Field(default_factory=dict)


class EvaluationRead(BaseModel):
    id: int
    policy_id: int
    evaluated_at: datetime
    outcome: str = Field(description="fired, coalesced or quiet")
    fired_by: list[str]
    reason: str
    checks: list[Check]
    overrides: dict[str, Any]
    window: dict[str, Any] | None = Field(description="the rows the retrain learns from")
    dataset_version_id: int | None
    pipeline_run_id: int | None
    retrain_status: str | None = Field(
        description="running, rejected, failed, registered, rolling_out, promoted, rolled_back"
    )
    retrain_detail: dict[str, Any]
    model_version_id: int | None
    rollout_id: int | None
    finished_at: datetime | None
    created_by: str | None


class BacktestAlternative(_Strict):
    name: str = Field(min_length=1, max_length=100)
    triggers: dict[str, Any] = Field(
        default_factory=dict,
        description="schedule {every_seconds | cron}, performance {metric, below|above, "
        "min_samples, window_seconds}, drift {share | features}, change {method, params}; "
        "{} never retrains",
    )
    window: dict[str, Any] | None = Field(default=None, description=WINDOW_DESCRIPTION)
    cooldown: str | None = Field(default=None, max_length=20)


class BacktestRequest(_Strict):
    dataset: str = Field(max_length=250, pattern=NAME_PATTERN)
    version: int | None = Field(default=None, ge=1, description="Default: the latest.")
    time_column: str = Field(max_length=250)
    step: str | int = Field(
        description="Replay in steps of this many rows (integer) or this period ('7d')."
    )
    initial: str | int = Field(
        description="The first model learns from these first rows (integer) or period."
    )
    include_policy: bool = Field(default=True, description="Replay the policy itself too.")
    alternatives: list[BacktestAlternative] = Field(default_factory=list, max_length=10)

    @model_validator(mode="after")
    def _something(self) -> "BacktestRequest":
        if not self.include_policy and not self.alternatives:
            raise ValueError("nothing to replay: include the policy or give alternatives")
        return self


class BacktestRead(BaseModel):
    policy: str
    dataset_version_id: int
    rows: int
    results: list[dict[str, Any]] = Field(
        description="per alternative: name, metric, retrain_count, retrains, series, overall"
    )


PolicyPage = Page[PolicyRead]
EvaluationPage = Page[EvaluationRead]
