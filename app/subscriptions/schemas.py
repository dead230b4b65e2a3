from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from app.core.pagination import Page
from app.subscriptions.models import DeliveryStatus

EVENT_TYPES = (
    "model_version.created",
    "model_version.status_changed",
    "model_version.packaged",
    "model.alias_moved",
    "pipeline_run.finished",
    "deployment.created",
    "deployment.updated",
    "deployment.deleted",
    "rollout.start",
    "rollout.hold",
    "rollout.advance",
    "rollout.complete",
    "rollout.rollback",
    "alert.fired",
    "alert.resolved",
    "alert.error",
    "drift.detected",
)


def _known(types: list[str]) -> list[str]:
    unknown = [
        t
        for t in types
        if t != "*"
        and t not in EVENT_TYPES
        and not (t.endswith(".*") and any(e.startswith(t[:-1]) for e in EVENT_TYPES))
    ]
    if unknown:
        raise ValueError(f"unknown event types {unknown}; known: {list(EVENT_TYPES)}, or '*'")
    return types


class SubscriptionCreate(BaseModel):
    url: str = Field(pattern=r"^https?://", max_length=2000, examples=["https://ops.example/hooks"])
    event_types: list[str] = Field(
        min_length=1, max_length=50, description="Event types, `rollout.*`, or `*` for all."
    )
    description: str | None = Field(default=None, max_length=500)

    _check_types = field_validator("event_types")(_known)


class SubscriptionUpdate(BaseModel):
    url: str | None = Field(default=None, pattern=r"^https?://", max_length=2000)
    event_types: list[str] | None = Field(default=None, min_length=1, max_length=50)
    description: str | None = Field(default=None, max_length=500)
    active: bool | None = Field(default=None, description="true re-enables a disabled endpoint")

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _known(value)


class SubscriptionRead(BaseModel):
    id: int
    url: str
    event_types: list[str]
    description: str | None
    active: bool
    disabled_reason: str | None
    created_by: str | None
    created_at: datetime


class SubscriptionCreated(SubscriptionRead):
    secret: str = Field(
        description="`whsec_…`: verifies the `webhook-signature` header. Shown only once."
    )


class SubscriptionPage(Page[SubscriptionRead]):
    pass


class DeliveryRead(BaseModel):
    id: int
    subscription_id: int
    event_id: int
    event_type: str
    message_id: str
    status: DeliveryStatus
    attempts: list[dict[str, Any]] = Field(description="at, status_code, error, duration_ms")
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    body: dict[str, Any]


class DeliveryPage(Page[DeliveryRead]):
    pass
