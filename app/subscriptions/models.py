"""Outbound webhooks: who wants which events, and every delivery with its attempts."""

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Enum, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, BigId, utcnow


class Subscription(Base):
    __tablename__ = "subscription"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    event_types: Mapped[list[str]] = mapped_column()
    description: Mapped[str | None] = mapped_column(String(500), default=None)
    secret_encrypted: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_by: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeliveryStatus(enum.StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"  # gave up, or refused for good (410, private address)


class OutboundDelivery(Base):
    __tablename__ = "outbound_delivery"
    __table_args__ = (Index("ix_outbound_delivery_subscription_id_id", "subscription_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscription.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column()
    event_type: Mapped[str] = mapped_column(String(100))
    message_id: Mapped[str] = mapped_column(String(100), doc="webhook-id: the same on retries")
    body: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[DeliveryStatus] = mapped_column(
        Enum(DeliveryStatus, name="delivery_status", native_enum=False, length=20),
        default=DeliveryStatus.pending,
    )
    attempts: Mapped[list[Any]] = mapped_column(default=list)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
