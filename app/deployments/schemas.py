from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, model_validator

from app.core.pagination import Page
from app.deployments.models import Environment, VariantMode

NAME = r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"  # a DNS label: it names Kubernetes objects too


class Autoscaling(BaseModel):
    min_replicas: int = Field(default=1, ge=0, le=100, description="0 allows scale to zero.")
    max_replicas: int = Field(default=4, ge=1, le=100)
    target_in_flight: float = Field(
        default=4.0, gt=0, le=1000, description="In-flight requests per replica to aim for."
    )
    window_seconds: float = Field(default=30, gt=0, le=3600, description="Averaging window.")
    scale_up_stabilization_seconds: float = Field(default=0, ge=0, le=3600)
    scale_down_stabilization_seconds: float = Field(default=120, ge=0, le=7200)
    scale_to_zero_after_seconds: float | None = Field(
        default=None, gt=0, le=86400, description="Idle time before the last replica stops."
    )

    @model_validator(mode="after")
    def _consistent(self) -> "Autoscaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        if self.scale_to_zero_after_seconds is not None and self.min_replicas != 0:
            raise ValueError("scale_to_zero_after_seconds needs min_replicas: 0")
        if self.min_replicas == 0 and self.scale_to_zero_after_seconds is None:
            raise ValueError("min_replicas: 0 needs scale_to_zero_after_seconds")
        return self


class Guardrails(BaseModel):
    max_error_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="How far the candidate's 5xx share may exceed the baseline's (0.01 = 1 point).",
    )
    max_p99_latency_ratio: float = Field(
        default=1.5, ge=1, le=100, description="New p99 may be at most this times the old one."
    )
    p99_slack_ms: float = Field(
        default=5.0,
        ge=0,
        le=60_000,
        description="A p99 increase smaller than this is noise, never a breach.",
    )
    max_disagreement: float | None = Field(
        default=None, ge=0, le=1, description="Share of shadowed requests whose predictions differ."
    )
    min_requests: int = Field(default=100, ge=1, description="No verdict on fewer requests.")
    min_attribution_ndcg: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="The candidate's feature ranking (global importance on reference data) "
        "must keep the baseline's at least this well (nDCG); checked once both are computed.",
    )


class RolloutPolicy(BaseModel):
    strategy: Literal["all_at_once", "canary", "linear"] = "canary"
    canary_percent: int = Field(default=10, ge=1, le=99)
    linear_steps: list[int] = Field(default_factory=lambda: [25, 50, 75], max_length=20)
    bake_seconds: float = Field(default=300, ge=0, le=86400)
    guardrails: Guardrails = Field(default_factory=Guardrails)

    @model_validator(mode="after")
    def _increasing(self) -> "RolloutPolicy":
        steps = self.linear_steps
        if any(not 0 < s < 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError("linear_steps must be increasing percentages between 1 and 99")
        return self


class VariantSpec(BaseModel):
    name: str = Field(pattern=NAME, max_length=63, examples=["blue"])
    model: str = Field(
        min_length=3,
        max_length=300,
        description="`name@alias` or `name/version`",
        examples=["churn@champion"],
    )
    weight: int = Field(default=100, ge=0, le=100, description="Share of live traffic, in percent.")
    mode: VariantMode = VariantMode.live


class DeploymentCreate(BaseModel):
    name: str = Field(pattern=NAME, max_length=63, examples=["churn"])
    environment: Environment = Environment.staging
    variants: list[VariantSpec] = Field(min_length=1, max_length=10)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    rollout: RolloutPolicy = Field(default_factory=RolloutPolicy)
    unit_key: str | None = Field(
        default=None, max_length=100, description="Header or field for sticky A/B assignment."
    )
    log_sample_rate: float = Field(
        default=1.0, ge=0, le=1, description="Share of requests written to the prediction log."
    )
    public: bool = Field(
        default=False,
        description="Answer predictions without a token. Off by default: the gateway then needs "
        "'Authorization: Bearer <token>' (any valid API token) for predict, infer and explain.",
    )

    @model_validator(mode="after")
    def _traffic(self) -> "DeploymentCreate":
        validate_variants(self.variants)
        return self


class DeploymentUpdate(BaseModel):
    variants: list[VariantSpec] | None = Field(default=None, min_length=1, max_length=10)
    autoscaling: Autoscaling | None = None
    rollout: RolloutPolicy | None = None
    unit_key: str | None = None
    log_sample_rate: float | None = Field(default=None, ge=0, le=1)
    public: bool | None = None

    @model_validator(mode="after")
    def _traffic(self) -> "DeploymentUpdate":
        if self.variants is not None:
            validate_variants(self.variants)
        return self


def validate_variants(variants: list[VariantSpec]) -> None:
    names = [v.name for v in variants]
    if len(names) != len(set(names)):
        raise ValueError(f"variant names must be unique: {names}")
    live = [v for v in variants if v.mode == VariantMode.live]
    if not live:
        raise ValueError("at least one variant must be live")
    total = sum(v.weight for v in live)
    if total != 100:
        raise ValueError(f"live variant weights must add up to 100; they add up to {total}")
    shadows = [v.name for v in variants if v.mode == VariantMode.shadow and v.weight != 0]
    if shadows:
        raise ValueError(
            f"shadow variants get a copy of traffic, not a share: set weight 0 for {shadows}"
        )


class VariantRead(BaseModel):
    name: str
    model: str
    model_version: int
    weight: int
    mode: VariantMode
    mirror: bool = Field(description="Gets a copy of the other live variants' requests.")


class DeploymentRead(BaseModel):
    id: int
    name: str
    environment: Environment
    variants: list[VariantRead]
    autoscaling: Autoscaling
    rollout: RolloutPolicy
    unit_key: str | None
    log_sample_rate: float
    public: bool
    generation: int
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class DeploymentPage(Page[DeploymentRead]):
    pass


class ReplicaRead(BaseModel):
    variant: str
    model_version: int
    gateway: str
    state: Literal["starting", "ready"]
    pid: int | None
    port: int
    started_at: datetime
    ready_at: datetime | None
    cold_start_seconds: float | None
    in_flight: int
    served: int
    reported_at: datetime


class ReplicaList(BaseModel):
    items: list[ReplicaRead]


class PromoteRequest(BaseModel):
    model: str = Field(
        min_length=3, max_length=300, description="`name/version` or `name@alias` to roll out."
    )
    variant: str | None = Field(
        default=None,
        pattern=NAME,
        max_length=63,
        description="Name of the new variant; `v<version>` when left out.",
    )
    strategy: Literal["all_at_once", "canary", "linear"] | None = Field(
        default=None, description="Overrides the deployment's rollout policy for this promotion."
    )
    bake_seconds: float | None = Field(default=None, ge=0, le=86400)
    set_alias: str | None = Field(
        default=None,
        max_length=63,
        description="Moved to the new version when the rollout completes, e.g. `champion`.",
        examples=["champion"],
    )


class RollbackRequest(BaseModel):
    reason: str = Field(default="rolled back by hand", max_length=500)


class DecisionRead(BaseModel):
    at: datetime
    step_index: int
    percent: int
    action: str
    reason: str
    numbers: dict[str, Any]


class RolloutRead(BaseModel):
    id: int
    deployment: str
    strategy: str
    state: str
    baseline_variant: str
    baseline_model: str
    candidate_variant: str
    candidate_model: str
    steps: list[int]
    step_index: int
    percent: int
    step_started_at: datetime
    bake_seconds: float
    guardrails: Guardrails
    set_alias: str | None
    reason: str | None
    created_by: str | None
    created_at: datetime
    finished_at: datetime | None
    decisions: list[DecisionRead]


class RolloutPage(Page[RolloutRead]):
    pass


class ExperimentCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, examples=["new-threshold"])
    control: str = Field(pattern=NAME, max_length=63, description="A live variant.")
    treatment: str = Field(pattern=NAME, max_length=63, description="Another live variant.")
    metric: Literal["accuracy", "reward"] = Field(
        default="accuracy",
        description="accuracy: feedback labels equal the predictions; reward: feedback rewards.",
    )
    higher_is_better: bool = True
    min_samples: int = Field(default=100, ge=2, le=10_000_000, description="Per variant.")
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    unit_key: str | None = Field(
        default=None,
        max_length=100,
        description="Sets the deployment's unit key: one user always sees one variant.",
    )

    @model_validator(mode="after")
    def _two_arms(self) -> "ExperimentCreate":
        if self.control == self.treatment:
            raise ValueError("control and treatment must be different variants")
        return self


class ArmRead(BaseModel):
    variant: str
    samples: int
    mean: float | None
    ci_low: float | None
    ci_high: float | None


class ExperimentRead(BaseModel):
    id: int
    deployment: str
    name: str
    control: str
    treatment: str
    metric: str
    higher_is_better: bool
    min_samples: int
    alpha: float
    started_at: datetime
    stopped_at: datetime | None
    created_by: str | None


class ExperimentResult(ExperimentRead):
    arms: list[ArmRead]
    difference: float | None = Field(description="treatment minus control")
    ci_low: float | None = Field(description="always-valid confidence sequence, lower end")
    ci_high: float | None
    p_value: float | None = Field(description="always-valid (mSPRT) p-value")
    verdict: str
    winner: str | None
    reason: str


class ExperimentPage(Page[ExperimentRead]):
    pass


class FeedbackItem(BaseModel):
    request_id: str = Field(min_length=1, max_length=100)
    label: Any = Field(default=None, description="Ground truth for a one-row request.")
    labels: list[Any] | None = Field(
        default=None, max_length=10_000, description="Ground truth per row, in request order."
    )
    reward: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _something(self) -> "FeedbackItem":
        if self.label is not None and self.labels is not None:
            raise ValueError("send `label` (one row) or `labels` (per row), not both")
        if self.label is None and self.labels is None and self.reward is None:
            raise ValueError("feedback needs `label`, `labels` or `reward`")
        return self


class FeedbackBatch(BaseModel):
    items: list[FeedbackItem] = Field(min_length=1, max_length=10_000)


def _feedback_shape(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "items" in value else "item"


# A body with `items` is a batch, any other one item: errors speak of the shape that was sent.
FeedbackBody = Annotated[
    Annotated[FeedbackItem, Tag("item")] | Annotated[FeedbackBatch, Tag("batch")],
    Discriminator(_feedback_shape),
]


class FeedbackAccepted(BaseModel):
    accepted: int
    matched: int = Field(description="How many request ids are already in the prediction log.")
