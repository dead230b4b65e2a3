from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response, status
from sqlalchemy.orm import Session

from app.auth.dependencies import Editor, Viewer
from app.core.config import API_PREFIX
from app.core.deps import DbSession
from app.core.errors import ErrorResponse
from app.core.pagination import PageParams, page_params
from app.deployments import service as deployments
from app.deployments.models import Deployment
from app.monitoring import alerts, drift_reports, service
from app.monitoring.metrics import endpoint_metrics
from app.monitoring.models import AlertRule, DriftReport
from app.monitoring.schemas import (
    AlertPage,
    AlertRead,
    AlertRuleCreate,
    AlertRulePage,
    AlertRuleRead,
    AlertRuleUpdate,
    DriftReportCreate,
    DriftReportPage,
    DriftReportRead,
    DriftScheduleRead,
    DriftScheduleWrite,
    EndpointMetrics,
    Fairness,
    Performance,
)
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
Page = Annotated[PageParams, Depends(page_params)]


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


alerting = APIRouter(prefix=API_PREFIX, tags=["alerts"], responses=errors)


def _rule(session: Session, rule: AlertRule) -> AlertRuleRead:
    deployment = session.get(Deployment, rule.deployment_id)
    return AlertRuleRead.model_validate(
        {
            **{c: getattr(rule, c) for c in AlertRuleRead.model_fields if hasattr(rule, c)},
            "deployment": deployment.name if deployment else "",
        }
    )


@alerting.post("/alert-rules", status_code=status.HTTP_201_CREATED, response_model=AlertRuleRead)
def create_alert_rule(
    body: AlertRuleCreate, session: DbSession, principal: Editor
) -> AlertRuleRead:
    """A condition on a deployment's serving, quality, fairness or drift numbers, evaluated by
    beat; it fires once after holding `for_seconds` and resolves once when it stops holding."""
    return _rule(session, alerts.create(session, body, by=principal))


@alerting.get("/alert-rules", response_model=AlertRulePage)
def list_alert_rules(session: DbSession, _: Viewer, page: Page) -> AlertRulePage:
    items, token = alerts.list_rules(session, page)
    return AlertRulePage(items=[_rule(session, r) for r in items], next_page_token=token)


@alerting.get("/alert-rules/{rule_id}", response_model=AlertRuleRead)
def get_alert_rule(rule_id: int, session: DbSession, _: Viewer) -> AlertRuleRead:
    return _rule(session, alerts.get_or_raise(session, rule_id))


@alerting.patch("/alert-rules/{rule_id}", response_model=AlertRuleRead)
def update_alert_rule(
    rule_id: int, body: AlertRuleUpdate, session: DbSession, _: Editor
) -> AlertRuleRead:
    return _rule(session, alerts.update(session, rule_id, body))


@alerting.delete(
    "/alert-rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response
)
def delete_alert_rule(rule_id: int, session: DbSession, _: Editor) -> Response:
    session.delete(alerts.get_or_raise(session, rule_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@alerting.get("/alerts", response_model=AlertPage)
def list_alerts(
    session: DbSession,
    _: Viewer,
    page: Page,
    state: Literal["firing", "error", "resolved"] | None = None,
    deployment: str | None = None,
) -> AlertPage:
    items, token = alerts.list_alerts(session, page, state, deployment)
    return AlertPage(
        items=[AlertRead.model_validate(a, from_attributes=True) for a in items],
        next_page_token=token,
    )


@router.post(
    "/{name}/drift-reports",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DriftReportRead,
)
def create_drift_report(
    name: str, body: DriftReportCreate, session: DbSession, principal: Editor
) -> DriftReportRead:
    """Compare the last `window` of logged inputs (and predictions) with the served version's
    reference profile; a worker computes it (poll the report until `ready`)."""
    return _report(drift_reports.request(session, name, body, by=principal), name)


@router.get("/{name}/drift-reports", response_model=DriftReportPage)
def list_drift_reports(name: str, session: DbSession, _: Viewer, page: Page) -> DriftReportPage:
    deployment = deployments.get_or_raise(session, name)
    items, token = drift_reports.list_reports(session, deployment, page)
    return DriftReportPage(items=[_report(r, name) for r in items], next_page_token=token)


@router.get("/{name}/drift-reports/{report_id}", response_model=DriftReportRead)
def get_drift_report(name: str, report_id: int, session: DbSession, _: Viewer) -> DriftReportRead:
    deployment = deployments.get_or_raise(session, name)
    return _report(drift_reports.get_or_raise(session, deployment, report_id), name)


@router.put("/{name}/drift-schedule", response_model=DriftScheduleRead)
def set_drift_schedule(
    name: str, body: DriftScheduleWrite, session: DbSession, _: Editor
) -> DriftScheduleRead:
    """Drift reports on a cron schedule (evaluated by beat), over the last `window`."""
    return DriftScheduleRead.model_validate(
        drift_reports.set_schedule(session, name, body), from_attributes=True
    )


def _report(report: DriftReport, deployment: str) -> DriftReportRead:
    values = {c: getattr(report, c) for c in DriftReportRead.model_fields if hasattr(report, c)}
    window = (report.result or {}).get("window") or {}
    read = {k: window.get(k) for k in ("sampled", "requests_read", "requests_in_window")}
    return DriftReportRead.model_validate({**values, **read, "deployment": deployment})
