"""Alert rules on a deployment's metrics, evaluated by beat.

A rule's condition must hold for `for_seconds` before it fires (pending in between); while it
keeps holding nothing more is sent — one alert, one `alert.fired` event — and when it stops
holding the alert resolves once (`alert.resolved`). No data is not a breach; a rule that
cannot be evaluated is in state `error` with the reason, and raises an alert of its own
(`alert.error`) that resolves once it can be evaluated again."""

import logging
import operator
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.service import Principal
from app.core.db import utcnow
from app.core.durations import BODY, parse_duration
from app.core.errors import AppError, NotFound, Unprocessable
from app.core.pagination import PageParams, keyset_page
from app.deployments import service as deployments
from app.deployments.models import Deployment, VariantMode
from app.events import service as events
from app.events.types import EventType
from app.explain.models import FeatureImportance, ImportanceStatus
from app.ml.explain import ndcg
from app.monitoring import service
from app.monitoring.metrics import endpoint_metrics
from app.monitoring.models import Alert, AlertRule, DriftReport
from app.monitoring.schemas import AlertRuleCreate, AlertRuleUpdate
from app.monitoring.windows import Window

logger = logging.getLogger(__name__)
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
LATENCY = {"latency_p50_ms": "p50", "latency_p95_ms": "p95", "latency_p99_ms": "p99"}
QUALITY = ("accuracy", "precision", "recall", "f1", "roc_auc", "rmse", "mae", "r2")
FAIRNESS = {
    "parity_ratio": "demographic_parity_ratio",
    "parity_difference": "demographic_parity_difference",
}
SERVING = (*LATENCY, "overhead_p99_ms", "error_rate", "request_rate")


def validate(metric: str, params: dict[str, Any], window: str) -> None:
    parse_duration(window, "window", where=BODY)
    if metric in FAIRNESS and not params.get("attribute"):
        raise Unprocessable(f"{metric} needs params.attribute: the input column that groups")
    if metric == "feature_drift" and not params.get("feature"):
        raise Unprocessable("feature_drift needs params.feature: the feature to watch")
    for key in ("min_samples", "min_group_size", "k"):
        value = params.get(key)
        if key in params and not (key == "k" and value is None) and not _count(value):
            raise Unprocessable(
                f"params.{key} must be a whole number of at least 1, got {value!r}",
                details={"loc": ["body", "params", key]},
            )


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def create(session: Session, data: AlertRuleCreate, *, by: Principal) -> AlertRule:
    deployment = deployments.get_or_raise(session, data.deployment)
    validate(data.metric, data.params, data.window)
    rule = AlertRule(
        name=data.name,
        deployment_id=deployment.id,
        metric=data.metric,
        operator=data.operator,
        threshold=data.threshold,
        window=data.window,
        for_seconds=data.for_seconds,
        params=data.params,
        created_by=by.name,
    )
    session.add(rule)
    session.flush()
    return rule


def get_or_raise(session: Session, rule_id: int) -> AlertRule:
    rule = session.get(AlertRule, rule_id)
    if rule is None:
        raise NotFound(f"alert rule {rule_id} does not exist")
    return rule


def update(session: Session, rule_id: int, data: AlertRuleUpdate) -> AlertRule:
    rule = get_or_raise(session, rule_id)
    changes = data.model_dump(exclude_unset=True)
    if "params" in changes and changes["params"] is None:
        changes["params"] = {}
    for field, value in changes.items():
        setattr(rule, field, value)
    validate(rule.metric, rule.params, rule.window)
    session.flush()
    return rule


def list_rules(session: Session, page: PageParams) -> tuple[Sequence[AlertRule], str | None]:
    return keyset_page(session, select(AlertRule), AlertRule.id, page)


def list_alerts(
    session: Session, page: PageParams, state: str | None, deployment: str | None
) -> tuple[Sequence[Alert], str | None]:
    stmt = select(Alert)
    if state is not None:
        stmt = stmt.where(Alert.state == state)
    if deployment is not None:
        stmt = stmt.where(Alert.deployment == deployment)
    return keyset_page(session, stmt, Alert.id, page)


def measure(
    session: Session, deployment: Deployment, rule: AlertRule, now: datetime
) -> float | None:
    """The rule's metric over its window; None when there is nothing to judge."""
    width = parse_duration(rule.window, "window")
    if rule.metric in QUALITY:
        return _quality(session, deployment, rule, Window(now - width, now, width))
    if rule.metric in FAIRNESS:
        return _fairness(session, deployment, rule, Window(now - width, now, width))
    if rule.metric == "attribution_ndcg":
        return _attribution(session, deployment, rule, now - width)
    if rule.metric in SERVING:
        step = max(width, timedelta(minutes=1))
        return _serving(session, deployment, rule, Window(now - width, now, step))
    return _drift(session, deployment, rule, now - width)


def _serving(
    session: Session, deployment: Deployment, rule: AlertRule, span: Window
) -> float | None:
    series = endpoint_metrics(session, deployment.name, span, rule.params.get("variant")).series
    points = [p for s in series for p in s.points]
    calls = sum(p.invocations for p in points)
    if not calls:
        return None
    if rule.metric == "request_rate":
        return calls / (span.end - span.start).total_seconds()
    if rule.metric == "error_rate":
        return sum(p.errors_5xx for p in points) / calls
    summaries = [p.overhead_ms if rule.metric == "overhead_p99_ms" else p.total_ms for p in points]
    values = [getattr(s, LATENCY.get(rule.metric, "p99")) for s in summaries]
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _quality(
    session: Session, deployment: Deployment, rule: AlertRule, span: Window
) -> float | None:
    value, labelled = service.quality_over(
        session, deployment.name, span, rule.metric, rule.params.get("variant")
    )
    return value if labelled >= int(rule.params.get("min_samples", 30)) else None


def _fairness(
    session: Session, deployment: Deployment, rule: AlertRule, span: Window
) -> float | None:
    result = service.fairness(
        session,
        deployment.name,
        span,
        rule.params["attribute"],
        rule.params.get("positive"),
        int(rule.params.get("min_group_size", 30)),
        rule.params.get("variant"),
    )
    value = getattr(result, FAIRNESS[rule.metric])
    return None if value is None else float(value)


def _attribution(
    session: Session, deployment: Deployment, rule: AlertRule, since: datetime
) -> float | None:
    """nDCG of the served version's feature ranking on production (computed inside the
    window) against its ranking on reference data; 1.0 means the same order."""
    live = [v for v in deployment.variants if v.mode == VariantMode.live]
    if not live:
        return None
    version_id = max(live, key=lambda v: v.weight).model_version_id

    def latest(source: str, after: datetime | None) -> FeatureImportance | None:
        stmt = select(FeatureImportance).where(
            FeatureImportance.model_version_id == version_id,
            FeatureImportance.source == source,
            FeatureImportance.status == ImportanceStatus.ready,
        )
        if after is not None:
            stmt = stmt.where(FeatureImportance.computed_at >= after)
        return session.scalar(stmt.order_by(FeatureImportance.computed_at.desc()).limit(1))

    reference, production = latest("reference", None), latest("production", since)
    if reference is None or production is None or not reference.features:
        return None
    return ndcg(
        {f["feature"]: f["mean_abs_shap"] for f in reference.features},
        {f["feature"]: f["mean_abs_shap"] for f in production.features or []},
        k=rule.params.get("k"),
    )


def _drift(
    session: Session, deployment: Deployment, rule: AlertRule, since: datetime
) -> float | None:
    """From the latest finished drift report inside the window."""
    report = session.scalar(
        select(DriftReport)
        .where(
            DriftReport.deployment_id == deployment.id,
            DriftReport.status == "ready",
            DriftReport.finished_at >= since,
        )
        .order_by(DriftReport.id.desc())
        .limit(1)
    )
    if report is None or report.result is None:
        return None
    if rule.metric == "dataset_drift":
        return 1.0 if report.dataset_drifted else 0.0
    if rule.metric == "drifted_share":
        return report.drifted_share
    feature = report.result.get("features", {}).get(rule.params["feature"])
    return None if feature is None else float(bool(feature.get("drifted")))


def evaluate(session: Session, rule: AlertRule, now: datetime | None = None) -> None:
    now = now or utcnow()
    deployment = session.get(Deployment, rule.deployment_id)
    if deployment is None:
        return
    try:
        with session.begin_nested():  # a failed query must not take the rule's state with it
            value = measure(session, deployment, rule, now)
    except AppError as exc:
        _cannot_evaluate(session, deployment, rule, exc.message, now)
        return
    except Exception as exc:
        logger.exception("alert rule %s: measuring %s failed", rule.id, rule.metric)
        reason = (
            f"measuring {rule.metric} failed unexpectedly ({type(exc).__name__}); "
            "the worker log has the details"
        )
        _cannot_evaluate(session, deployment, rule, reason, now)
        return
    if rule.state == "error":
        _evaluable_again(session, deployment, rule, now)
    holds = value is not None and OPERATORS[rule.operator](value, rule.threshold)
    rule.last_value, rule.last_evaluated_at = value, now
    if holds:
        if rule.state == "ok":
            rule.state, rule.pending_since = "pending", now
        if (
            rule.state == "pending"
            and rule.pending_since is not None
            and (now - rule.pending_since).total_seconds() >= rule.for_seconds
        ):
            _fire(session, deployment, rule, value, now)
        return
    if rule.state == "firing":
        _resolve(session, deployment, rule, value, now)
    rule.state, rule.pending_since = "ok", None


def _fire(
    session: Session, deployment: Deployment, rule: AlertRule, value: float | None, now: datetime
) -> None:
    rule.state = "firing"
    message = (
        f"{rule.name}: {rule.metric} = {value:.4g} {rule.operator} {rule.threshold:g} "
        f"on {deployment.name} (window {rule.window}, held {rule.for_seconds}s)"
    )
    alert = _open_alert(session, deployment, rule, "firing", value, message, now)
    events.record(
        session, EventType.alert_fired, f"deployment:{deployment.name}", _payload(rule, alert)
    )


def _open_alert(
    session: Session,
    deployment: Deployment,
    rule: AlertRule,
    state: str,
    value: float | None,
    message: str,
    now: datetime,
) -> Alert:
    alert = Alert(
        rule_id=rule.id,
        deployment=deployment.name,
        state=state,
        value=value,
        threshold=rule.threshold,
        message=message,
        started_at=now,
    )
    session.add(alert)
    session.flush()
    return alert


def _resolve(
    session: Session,
    deployment: Deployment,
    rule: AlertRule,
    value: float | None,
    now: datetime,
    state: str = "firing",
) -> None:
    for alert in session.scalars(
        select(Alert).where(Alert.rule_id == rule.id, Alert.state == state)
    ):
        alert.state, alert.resolved_at = "resolved", now
        payload = _payload(rule, alert) | {"value": value}
        events.record(session, EventType.alert_resolved, f"deployment:{deployment.name}", payload)


def _cannot_evaluate(
    session: Session, deployment: Deployment, rule: AlertRule, reason: str, now: datetime
) -> None:
    """A rule that cannot be judged would never fire on a real breach: it says so on the rule
    (state error, the reason), and once per episode as an alert of its own (`alert.error`).
    A firing alert stays firing: nothing shows that it stopped holding."""
    rule.last_value, rule.last_evaluated_at, rule.pending_since = None, now, None
    message = f"{rule.name}: cannot evaluate {rule.metric} on {deployment.name}: {reason}"
    if rule.state == "error":
        rule.error = reason
        for alert in session.scalars(
            select(Alert).where(Alert.rule_id == rule.id, Alert.state == "error")
        ):
            alert.message = message  # the same episode, the latest reason
        return
    rule.state, rule.error = "error", reason
    alert = _open_alert(session, deployment, rule, "error", None, message, now)
    payload = _payload(rule, alert) | {"error": reason}
    events.record(session, EventType.alert_error, f"deployment:{deployment.name}", payload)


def _evaluable_again(
    session: Session, deployment: Deployment, rule: AlertRule, now: datetime
) -> None:
    """The error alert resolves; the rule takes up where it was (firing if its breach alert is
    still open, else ok) and is judged on the value just measured."""
    _resolve(session, deployment, rule, None, now, state="error")
    rule.error = None
    still_firing = session.scalar(
        select(Alert.id).where(Alert.rule_id == rule.id, Alert.state == "firing").limit(1)
    )
    rule.state = "firing" if still_firing is not None else "ok"


def _payload(rule: AlertRule, alert: Alert) -> dict[str, Any]:
    return {
        "alert": alert.id,
        "rule": rule.id,
        "name": rule.name,
        "deployment": alert.deployment,
        "metric": rule.metric,
        "value": alert.value,
        "threshold": rule.threshold,
        "message": alert.message,
    }
