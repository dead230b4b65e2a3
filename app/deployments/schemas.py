from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

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
    max_error_rate: float = Field(default=0.01, ge=0, le=1, description="5xx share, e.g. 0.01.")
    max_p99_latency_ratio: float = Field(
        default=1.5, ge=1, le=100, description="New p99 may be at most this times the old one."
    )
    max_disagreement: float | None = Field(
        default=None, ge=0, le=1, description="Share of shadowed requests whose predictions differ."
    )
    min_requests: int = Field(default=100, ge=1, description="No verdict on fewer requests.")


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

    @model_validator(mode="after")
    def _traffic(self) -> "DeploymentCreate":
        validate_variants(self.variants)
        return self


class DeploymentUpdate(BaseModel):
    variants: list[VariantSpec] | None = Field(default=None, min_length=1, max_length=10)
    autoscaling: Autoscaling | None = None
    rollout: RolloutPolicy | None = None
    unit_key: str | None = None

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


class DeploymentRead(BaseModel):
    id: int
    name: str
    environment: Environment
    variants: list[VariantRead]
    autoscaling: Autoscaling
    rollout: RolloutPolicy
    unit_key: str | None
    generation: int
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class DeploymentPage(Page[DeploymentRead]):
    pass
