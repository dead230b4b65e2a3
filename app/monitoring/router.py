from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.auth.dependencies import Viewer
from app.core.config import API_PREFIX
from app.core.deps import DbSession
from app.core.errors import ErrorResponse
from app.deployments import service as deployments
from app.monitoring import service
from app.monitoring.metrics import endpoint_metrics
from app.monitoring.schemas import EndpointMetrics, Fairness, Performance
from app.monitoring.windows import window

errors: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
}
router = APIRouter(prefix=API_PREFIX + "/deployments", tags=["monitoring"], responses=errors)
From = Annotated[
    datetime | None,
    Query(alias="from", description="Start (ISO 8601); default: `to` minus the window."),
]
To = Annotated[datetime | None, Query(description="End (ISO 8601); default: now.")]


@router.get("/{name}/metrics", response_model=EndpointMetrics, response_model_by_alias=True)
def get_endpoint_metrics(
    name: str,
    session: DbSession,
    _: Viewer,
    start: From = None,
    to: To = None,
    window_: Annotated[str, Query(alias="window", description="e.g. 1h, 7d")] = "1h",
    step: Annotated[str, Query(description="A multiple of 1m, e.g. 1m, 5m, 1h")] = "1m",
    variant: str | None = None,
) -> EndpointMetrics:
    """Invocations, rate, total / model / overhead latency percentiles, 4xx/5xx, cold starts,
    replicas and in-flight per bucket and variant, from the gateways' per-minute rollups."""
    deployments.get_or_raise(session, name)
    span = window(start, to, window_, step, minimum_step=timedelta(minutes=1))
    return endpoint_metrics(session, name, span, variant)


@router.get("/{name}/performance", response_model=Performance, response_model_by_alias=True)
def get_performance(
    name: str,
    session: DbSession,
    _: Viewer,
    start: From = None,
    to: To = None,
    window_: Annotated[str, Query(alias="window", description="e.g. 7d")] = "7d",
    step: Annotated[str, Query(description="Bucket width, e.g. 1h, 1d")] = "1d",
    variant: str | None = None,
) -> Performance:
    """Classification (accuracy, precision, recall, F1, ROC AUC) or regression (RMSE, MAE,
    R²) per bucket and variant, over the predictions that feedback has labelled."""
    span = window(start, to, window_, step)
    return service.performance(session, name, span, variant)


@router.get("/{name}/fairness", response_model=Fairness, response_model_by_alias=True)
def get_fairness(
    name: str,
    session: DbSession,
    _: Viewer,
    attribute: Annotated[str, Query(min_length=1, description="A logged input column.")],
    start: From = None,
    to: To = None,
    window_: Annotated[str, Query(alias="window")] = "7d",
    positive: Annotated[
        str | None, Query(description="The favourable prediction; binary models: class 1.")
    ] = None,
    min_group_size: Annotated[int, Query(ge=1, le=1_000_000)] = 30,
    variant: str | None = None,
) -> Fairness:
    """Per group selection rate, TPR and FPR; demographic parity difference and ratio,
    equalized odds difference and the four-fifths rule over the groups big enough to judge."""
    span = window(start, to, window_, window_)
    return service.fairness(session, name, span, attribute, positive, min_group_size, variant)
