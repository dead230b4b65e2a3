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
from app.ml import drift
from app.monitoring.models import DriftReport, DriftSchedule, PredictionLog
from app.monitoring.schemas import DriftOptions, DriftReportCreate, DriftScheduleWrite
from app.monitoring.service import MAX_ROWS, logged_rows
from app.registry.models import ModelVersion

DRIFT_JOB = "monitoring.drift_report"


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
    logged = session.scalar(
        select(func.count())
        .select_from(PredictionLog)
        .where(
            PredictionLog.deployment == name,
            PredictionLog.variant == variant,
            PredictionLog.shadow.is_(False),
            PredictionLog.status == 200,
            PredictionLog.created_at >= start,
        )
    )
    if not logged and trigger == "manual":
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


def compute(session: Session, report: DriftReport) -> None:
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
    rows = session.execute(
        select(PredictionLog.inputs, PredictionLog.outputs)
        .where(
            PredictionLog.deployment == deployment.name,
            PredictionLog.variant == report.variant,
            PredictionLog.shadow.is_(False),
            PredictionLog.status == 200,
            PredictionLog.created_at >= report.window_start,
            PredictionLog.created_at < report.window_end,
        )
        .limit(MAX_ROWS)
    ).all()
    features = [c["name"] for c in version.signature["inputs"]]
    columns: dict[str, list[Any]] = {name: [] for name in features}
    predictions: list[Any] = []
    for inputs, outputs in rows:
        for row in logged_rows(inputs):
            for name in features:
                columns[name].append(row.get(name))
        predictions.extend((outputs or {}).get("predictions") or [])
    if not predictions:
        report.status, report.finished_at = "failed", utcnow()
        report.error = "no predictions were logged in the window"
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
    body = result.to_dict()
    body["current_rows"] = len(predictions)
    target = version.target
    if target and target in profile["columns"]:
        # the training labels are the reference for what the model should be predicting
        outcome = drift.prediction_drift(
            profile["columns"][target], predictions, thresholds=thresholds
        )
        body["prediction"] = {**outcome.to_dict(), "reference": f"training labels ({target})"}
    report.result = body
    report.dataset_drifted, report.drifted_share = result.dataset_drifted, result.drifted_share
    report.status, report.finished_at = "ready", utcnow()
    if result.dataset_drifted:
        events.record(
            session,
            "drift.detected",
            f"deployment:{deployment.name}",
            {
                "deployment": deployment.name,
                "report": report.id,
                "drifted_share": result.drifted_share,
                "drifted_features": result.drifted_features,
            },
        )


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
