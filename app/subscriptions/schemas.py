from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, WithJsonSchema, field_validator

from app.core.pagination import Page
from app.events.types import subscribable_patterns
from app.subscriptions.models import DeliveryStatus

PATTERNS = subscribable_patterns()
EventPattern = Annotated[str, WithJsonSchema({"type": "string", "enum": PATTERNS})]
TYPES_HELP = "Event types, `domain.*` for all of a domain's, or `*` for all."


def _known(types: list[str]) -> list[str]:
    unknown = [t for t in types if t not in PATTERNS]
    if unknown:
        raise ValueError(f"unknown event types {unknown}; known: {PATTERNS}")
    return types


class SubscriptionCreate(BaseModel):
    url: str = Field(pattern=r"^https?://", max_length=2000, examples=["https://ops.example/hooks"])
    event_types: list[EventPattern] = Field(min_length=1, max_length=50, description=TYPES_HELP)
    description: str | None = Field(default=None, max_length=500)

    _check_types = field_validator("event_types")(_known)


class SubscriptionUpdate(BaseModel):
    url: str | None = Field(default=None, pattern=r"^https?://", max_length=2000)
    event_types: list[EventPattern] | None = Field(
        default=None, min_length=1, max_length=50, description=TYPES_HELP
    )
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
