from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response, status

from app.auth.dependencies import Admin
from app.core.config import API_PREFIX
from app.core.deps import AppSettings, DbSession
from app.core.errors import ErrorResponse
from app.core.pagination import PageParams, page_params
from app.subscriptions import service
from app.subscriptions.models import Subscription
from app.subscriptions.schemas import (
    DeliveryPage,
    DeliveryRead,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionPage,
    SubscriptionRead,
    SubscriptionUpdate,
)

errors: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
}
router = APIRouter(prefix=API_PREFIX + "/subscriptions", tags=["subscriptions"], responses=errors)
Page = Annotated[PageParams, Depends(page_params)]


def _read(subscription: Subscription) -> SubscriptionRead:
    return SubscriptionRead.model_validate(subscription, from_attributes=True)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SubscriptionCreated)
def create_subscription(
    body: SubscriptionCreate, session: DbSession, settings: AppSettings, principal: Admin
) -> SubscriptionCreated:
    """Outbound webhooks for the event types named, signed per Standard Webhooks with the
    secret returned here once. A URL whose host is (or resolves to) a private, loopback,
    link-local or metadata address is a 422 unless FLYWHEEL_WEBHOOK_ALLOWED_HOSTS allows it."""
    subscription, secret = service.create(session, settings, body, by=principal)
    return SubscriptionCreated(**_read(subscription).model_dump(), secret=secret)


@router.get("", response_model=SubscriptionPage)
def list_subscriptions(session: DbSession, _: Admin, page: Page) -> SubscriptionPage:
    items, token = service.list_subscriptions(session, page)
    return SubscriptionPage(items=[_read(s) for s in items], next_page_token=token)


@router.get("/{subscription_id}", response_model=SubscriptionRead)
def get_subscription(subscription_id: int, session: DbSession, _: Admin) -> SubscriptionRead:
    return _read(service.get_or_raise(session, subscription_id))


@router.patch("/{subscription_id}", response_model=SubscriptionRead)
def update_subscription(
    subscription_id: int,
    body: SubscriptionUpdate,
    session: DbSession,
    settings: AppSettings,
    _: Admin,
) -> SubscriptionRead:
    """A new `url` is checked as at creation: private and metadata addresses are a 422."""
    return _read(service.update(session, settings, subscription_id, body))


@router.delete(
    "/{subscription_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response
)
def delete_subscription(subscription_id: int, session: DbSession, _: Admin) -> Response:
    service.delete(session, subscription_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{subscription_id}/deliveries", response_model=DeliveryPage)
def list_deliveries(subscription_id: int, session: DbSession, _: Admin, page: Page) -> DeliveryPage:
    """The delivery log: every attempt with its status code, error and duration."""
    items, token = service.deliveries(session, subscription_id, page)
    return DeliveryPage(
        items=[DeliveryRead.model_validate(d, from_attributes=True) for d in items],
        next_page_token=token,
    )


@router.post(
    "/{subscription_id}/deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryRead,
)
def redeliver(subscription_id: int, delivery_id: int, session: DbSession, _: Admin) -> DeliveryRead:
    delivery = service.redeliver(session, subscription_id, delivery_id)
    return DeliveryRead.model_validate(delivery, from_attributes=True)
