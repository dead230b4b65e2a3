"""Drift reports: a window of logged production inputs (and predictions) against the served
version's reference profile, stored when its training data was uploaded. The request only
records what to compare; a worker reads the window and computes (`compute`)."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from croniter import croniter
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth.service import Principal
from app.core.db import utcnow
from app.core.durations import BODY, parse_duration
from app.core.errors import NotFound, Unprocessable
from app.core.outbox import enqueue
from app.core.pagination import PageParams, keyset_page
from app.datasets.models import DatasetVersion
from app.deployments import service as deployments
from app.deployments.models import Deployment, VariantMode
from app.events import service as events
from app.events.types import EventType
from app.ml import drift
from app.monitoring.models import DriftReport, DriftSchedule, PredictionLog
from app.monitoring.schemas import DriftOptions, DriftReportCreate, DriftScheduleWrite
from app.monitoring.service import logged_rows
from app.registry.models import ModelVersion

DRIFT_JOB = "monitoring.drift_report"
INSUFFICIENT = "insufficient_data"  # a finished report without a verdict: too few rows


def _served_version(deployment: Deployment, variant: str | None) -> tuple[str, int]:
    live = [v for v in deployment.variants if v.mode == VariantMode.live]
    if variant is None:
        chosen = max(live, key=lambda v: v.weight)
    else:
        found = [v for v in deployment.variants if v.name == variant]
        if not found:
            raise Unprocessable(
                f"variant {variant!r} is not part of {deployment.name!r}; "
                f"variants: {[v.name for v in deployment.variants]}",
                details={"loc": ["body", "variant"]},
            )
        chosen = found[0]
    return chosen.name, chosen.model_version_id


def _window_filter(
    deployment: str, variant: str | None, start: datetime, end: datetime
) -> tuple[Any, ...]:
    """The live requests a variant answered in [start, end): what a drift report judges."""
    return (
        PredictionLog.deployment == deployment,
        PredictionLog.variant == variant,
        PredictionLog.shadow.is_(False),
        PredictionLog.status == 200,
        PredictionLog.created_at >= start,
        PredictionLog.created_at < end,
    )


def request(
    session: Session,
    name: str,
    data: DriftReportCreate,
    *,
    by: Principal | None,
    trigger: str = "manual",
) -> DriftReport:
    deployment = deployments.get_or_raise(session, name)
    end = utcnow()
    start = end - parse_duration(data.window, "window", where=BODY)
    variant, version_id = _served_version(deployment, data.variant)
    version = session.get(ModelVersion, version_id)
    if version is None or version.dataset_version_id is None:
        raise Unprocessable(
            f"{name!r} serves a version registered without its training dataset; drift needs "
            "the reference profile stored with it (register with dataset_version_id)"
        )
    where = _window_filter(name, variant, start, end)
    logged = session.scalar(select(PredictionLog.id).where(*where).limit(1))
    if logged is None and trigger == "manual":
        raise Unprocessable(
            f"no predictions of {name}/{variant} were logged in the last {data.window}; "
            "widen the window or check the deployment's log_sample_rate"
        )
    report = DriftReport(
        deployment_id=deployment.id,
        variant=variant,
        model_version_id=version_id,
        window_start=start,
        window_end=end,
        options=DriftOptions.model_validate(data.model_dump()).model_dump(mode="json"),
        trigger=trigger,
        created_by=by.name if by else trigger,
    )
    session.add(report)
    session.flush()
    enqueue(session, DRIFT_JOB, {"report_id": report.id})
    return report


def _read_window(
    session: Session, deployment: str, report: DriftReport, max_rows: int
) -> tuple[list[Any], dict[str, Any]]:
    """The window's logged requests, newest first and at most `max_rows` (ties broken by id,
    so the same window always reads the same rows), and what was read of how many."""
    where = _window_filter(deployment, report.variant, report.window_start, report.window_end)
    rows = list(
        session.execute(
            select(PredictionLog.inputs, PredictionLog.outputs)
            .where(*where)
            .order_by(PredictionLog.created_at.desc(), PredictionLog.id.desc())
            .limit(max_rows)
        ).all()
    )
    in_window = len(rows)
    if in_window >= max_rows:  # cut, or exactly full: only a count can tell
        counted = session.scalar(select(func.count()).select_from(PredictionLog).where(*where))
        in_window = int(counted or 0)
    window = {
        "sampled": in_window > len(rows),
        "requests_read": len(rows),
        "requests_in_window": in_window,
        "max_requests": max_rows,
    }
    return rows, window


def compute(session: Session, report: DriftReport, *, max_rows: int, min_rows: int) -> None:
    """Judge the window; one with fewer than `min_rows` rows gets no verdict
    (`insufficient_data`), and one cut at `max_rows` logged requests says it was sampled."""
    deployment = session.get(Deployment, report.deployment_id)
    version = session.get(ModelVersion, report.model_version_id)
    dataset = (
        session.get(DatasetVersion, version.dataset_version_id)
        if version is not None and version.dataset_version_id is not None
        else None
    )
    if deployment is None or version is None or dataset is None or not version.signature:
        report.status, report.error = "failed", "the served version or its reference is gone"
        report.finished_at = utcnow()
        return
    rows, window = _read_window(session, deployment.name, report, max_rows)
    features = [c["name"] for c in version.signature["inputs"]]
    columns: dict[str, list[Any]] = {name: [] for name in features}
    predictions: list[Any] = []
    for inputs, outputs in rows:
        for row in logged_rows(inputs):
            for name in features:
                columns[name].append(row.get(name))
        predictions.extend((outputs or {}).get("predictions") or [])
    counts = {"current_rows": len(predictions), "min_rows": min_rows, "window": window}
    report.finished_at = utcnow()
    if len(predictions) < min_rows:
        report.status = INSUFFICIENT
        report.result = counts | {
            "reason": f"{len(predictions)} predicted rows in the window; a verdict needs at "
            f"least {min_rows} (FLYWHEEL_DRIFT_MIN_ROWS): widen the window"
        }
        return
    options = DriftOptions.model_validate(report.options)
    profile = dataset.profile
    kept = {k: v for k, v in profile["columns"].items() if k in columns}
    reference = {**profile, "columns": kept}
    thresholds = {str(method): value for method, value in options.thresholds.items()}
    result = drift.dataset_drift(
        reference,
        columns,
        share=options.share,
        numeric_method=options.numeric_method,
        categorical_method=options.categorical_method,
        methods=options.methods,
        thresholds=thresholds,
        feature_thresholds=options.feature_thresholds,
    )
    body = result.to_dict() | counts
    target = version.target
    if target and target in profile["columns"]:
        # the training labels are the reference for what the model should be predicting
        outcome = drift.prediction_drift(
            profile["columns"][target], predictions, thresholds=thresholds
        )
        body["prediction"] = {**outcome.to_dict(), "reference": f"training labels ({target})"}
    report.result = body
    report.dataset_drifted, report.drifted_share = result.dataset_drifted, result.drifted_share
    report.status = "ready"
    _record_drift(session, deployment.name, report, result)


def _record_drift(
    session: Session, deployment: str, report: DriftReport, result: drift.DatasetDrift
) -> None:
    """`drift.feature_detected` whenever any feature drifted (with each one's scores), so a
    watcher of one feature hears of it even when the data set as a whole did not drift;
    `drift.detected` when the drifted share passes the report's rule."""
    subject = f"deployment:{deployment}"
    summary = {
        "deployment": deployment,
        "variant": report.variant,
        "report": report.id,
        "drifted_share": result.drifted_share,
        "drifted_features": result.drifted_features,
    }
    if result.drifted_features:
        scores = {
            name: {
                "method": feature.method,
                "statistic": feature.statistic,
                "p_value": feature.p_value,
                "threshold": feature.threshold,
            }
            for name, feature in result.features.items()
            if feature.drifted
        }
        payload = summary | {"dataset_drifted": result.dataset_drifted, "features": scores}
        events.record(session, EventType.drift_feature_detected, subject, payload)
    if result.dataset_drifted:
        events.record(session, EventType.drift_detected, subject, summary)


def get_or_raise(session: Session, deployment: Deployment, report_id: int) -> DriftReport:
    report = session.get(DriftReport, report_id)
    if report is None or report.deployment_id != deployment.id:
        raise NotFound(f"drift report {report_id} of {deployment.name!r} does not exist")
    return report


def list_reports(
    session: Session, deployment: Deployment, page: PageParams
) -> tuple[Sequence[DriftReport], str | None]:
    stmt = select(DriftReport).where(DriftReport.deployment_id == deployment.id)
    return keyset_page(session, stmt, DriftReport.id, page)


def set_schedule(session: Session, name: str, data: DriftScheduleWrite) -> DriftSchedule:
    deployment = deployments.get_or_raise(session, name)
    if not croniter.is_valid(data.cron):
        raise Unprocessable(
            f"cron: {data.cron!r} is not a cron expression, e.g. '0 * * * *' (hourly)",
            details={"loc": ["body", "cron"]},
        )
    parse_duration(data.window, "window", where=BODY)
    schedule = session.scalar(
        select(DriftSchedule).where(DriftSchedule.deployment_id == deployment.id)
    )
    if schedule is None:
        schedule = DriftSchedule(deployment_id=deployment.id)
        session.add(schedule)
    schedule.cron, schedule.window = data.cron, data.window
    schedule.options = DriftOptions.model_validate(data.model_dump()).model_dump(mode="json")
    schedule.next_run_at = next_fire(data.cron, utcnow())
    session.flush()
    return schedule


def next_fire(cron: str, after: datetime) -> datetime:
    fire: datetime = croniter(cron, after).get_next(datetime)
    return fire


def due(session: Session, now: datetime) -> None:
    """Beat's tick: a report for every schedule that is due, then its next time."""
    stmt = (
        select(DriftSchedule)
        .where(DriftSchedule.next_run_at <= now)
        .with_for_update(skip_locked=True)
    )
    for schedule in session.scalars(stmt):
        deployment = session.get(Deployment, schedule.deployment_id)
        if deployment is not None:
            data = DriftReportCreate.model_validate({**schedule.options, "window": schedule.window})
            request(session, deployment.name, data, by=None, trigger="schedule")
        schedule.next_run_at = next_fire(schedule.cron, now)
