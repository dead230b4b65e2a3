"""Evaluating a policy: each trigger says whether it fires and why, with its numbers; fired
triggers are coalesced into at most one retrain per cooldown, and every evaluation is kept."""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.artifacts import ArtifactStore
from app.core.db import utcnow
from app.core.durations import parse_duration
from app.core.errors import Conflict, Unprocessable
from app.datasets import service as datasets
from app.deployments.models import Deployment
from app.events import service as events
from app.events.types import EventType
from app.monitoring import service as monitoring
from app.monitoring.models import DriftReport
from app.monitoring.windows import Window
from app.pipelines import service as pipelines
from app.training import data, retrain
from app.training.models import PolicyEvaluation, RetrainingPolicy
from app.training.schemas import Check, DataSpec, TrainingSpec, TriggerRequest, Triggers
from app.training.service import data_source, normalize_window, served_version


def _schedule(policy: RetrainingPolicy, cron: str, now: datetime) -> Check:
    due = policy.next_schedule_at
    if due is None or now < due:
        return Check(
            trigger="schedule", fired=False, reason=f"next due at {due}", numbers={"due": due}
        )
    policy.next_schedule_at = pipelines.next_fire(cron, now)
    return Check(
        trigger="schedule",
        fired=True,
        reason=f"cron {cron!r} was due at {due.isoformat()}",
        numbers={"due": due.isoformat(), "next": policy.next_schedule_at},
    )


def _performance(
    session: Session, policy: RetrainingPolicy, deployment: Deployment, now: datetime
) -> Check:
    """Judged on rows answered since the last retrain (within the window), so the evidence
    that fired one retrain never fires another."""
    rule = Triggers.model_validate(policy.triggers).performance
    assert rule is not None
    since = now - parse_duration(rule.window, "window")
    if policy.last_retrain_at is not None and policy.last_retrain_at > since:
        since = policy.last_retrain_at
    value, labelled = monitoring.quality_over(
        session, deployment.name, Window(since, now, now - since), rule.metric, None
    )
    bound = f"below {rule.below:g}" if rule.below is not None else f"above {rule.above:g}"
    numbers = {
        "metric": rule.metric,
        "value": value,
        "labelled": labelled,
        "min_samples": rule.min_samples,
        "since": since.isoformat(),
    }
    if value is None or labelled < rule.min_samples:
        reason = f"{labelled} labelled rows since {since.isoformat()}; need {rule.min_samples}"
        return Check(trigger="performance", fired=False, reason=reason, numbers=numbers)
    breached = value < rule.below if rule.below is not None else value > (rule.above or 0.0)
    verdict = "is" if breached else "is not"
    reason = f"{rule.metric} = {value:.4g} over {labelled} labelled rows {verdict} {bound}"
    return Check(trigger="performance", fired=breached, reason=reason, numbers=numbers)


def _drift(session: Session, policy: RetrainingPolicy, deployment: Deployment) -> Check:
    """Each drift report is looked at once."""
    rule = Triggers.model_validate(policy.triggers).drift
    assert rule is not None
    seen = policy.last_drift_report_id or 0
    report = session.scalar(
        select(DriftReport)
        .where(
            DriftReport.deployment_id == deployment.id,
            DriftReport.status == "ready",
            DriftReport.id > seen,
        )
        .order_by(DriftReport.id.desc())
        .limit(1)
    )
    if report is None:
        return Check(trigger="drift", fired=False, reason=f"no drift report after #{seen}")
    policy.last_drift_report_id = report.id
    features = (report.result or {}).get("features", {})
    drifted = sorted(name for name, f in features.items() if f.get("drifted"))
    numbers = {
        "report": report.id,
        "dataset_drifted": report.dataset_drifted,
        "drifted_share": report.drifted_share,
        "drifted_features": drifted,
    }
    if rule.features:
        hit = [f for f in rule.features if f in drifted]
        reason = (
            f"report #{report.id}: {', '.join(hit)} drifted"
            if hit
            else f"report #{report.id}: none of {rule.features} drifted"
        )
        return Check(trigger="drift", fired=bool(hit), reason=reason, numbers=numbers)
    share = f"{(report.drifted_share or 0):.0%} of features drifted"
    if report.dataset_drifted:
        reason = f"report #{report.id}: dataset drift ({share})"
    else:
        reason = f"report #{report.id}: no dataset drift ({share})"
    return Check(
        trigger="drift", fired=bool(report.dataset_drifted), reason=reason, numbers=numbers
    )


def _new_data(session: Session, policy: RetrainingPolicy, source_name: str) -> Check:
    source = data_source(session, source_name)
    latest = datasets.latest_version_id(session, source.dataset_id)
    seen = policy.last_dataset_version_id
    if latest is None or (seen is not None and latest <= seen):
        return Check(trigger="new_data", fired=False, reason=f"no new version from {source_name!r}")
    policy.last_dataset_version_id = latest
    return Check(
        trigger="new_data",
        fired=True,
        reason=f"data source {source_name!r} added dataset version {latest}",
        numbers={"dataset_version_id": latest},
    )


def _online(
    session: Session,
    store: ArtifactStore,
    policy: RetrainingPolicy,
    deployment: Deployment,
    now: datetime,
) -> Check:
    """Due at the cadence, and only with enough new labelled rows to be worth a version."""
    due = policy.next_online_at
    if due is None or now < due:
        return Check(trigger="online", fired=False, reason=f"next update at {due}")
    every = parse_duration(str(policy.training["publish_every"]), "publish_every")
    policy.next_online_at = now + every
    since = policy.last_online_row_at
    fresh = data.policy_rows(
        session,
        store,
        DataSpec.model_validate(policy.data),
        deployment.name,
        served_version(session, deployment),
        now=now,
        after=since,
    )
    needed = int(policy.training.get("min_rows", 100))
    numbers = {"new_rows": len(fresh), "min_rows": needed, "since": since}
    if len(fresh) < needed:
        reason = f"online update due, but only {len(fresh)} new labelled rows (need {needed})"
        return Check(trigger="online", fired=False, reason=reason, numbers=numbers)
    reason = f"online update due at {due.isoformat()}: {len(fresh)} new labelled rows"
    return Check(trigger="online", fired=True, reason=reason, numbers=numbers)


def checks(
    session: Session, store: ArtifactStore, policy: RetrainingPolicy, now: datetime
) -> list[Check]:
    deployment = session.get(Deployment, policy.deployment_id)
    assert deployment is not None
    triggers = Triggers.model_validate(policy.triggers)
    found = []
    if triggers.schedule is not None:
        found.append(_schedule(policy, triggers.schedule.cron, now))
    if triggers.performance is not None:
        found.append(_performance(session, policy, deployment, now))
    if triggers.drift is not None:
        found.append(_drift(session, policy, deployment))
    if triggers.new_data is not None:
        found.append(_new_data(session, policy, triggers.new_data.data_source))
    if policy.training.get("mode") == "online":
        found.append(_online(session, store, policy, deployment, now))
    return found


def _blocked(session: Session, policy: RetrainingPolicy, now: datetime) -> str | None:
    running = retrain.in_flight(session, policy)
    if running is not None:
        return (
            f"a retrain is in progress (evaluation #{running.id}, "
            f"pipeline run #{running.pipeline_run_id}, {running.retrain_status})"
        )
    if policy.last_retrain_at is not None:
        until = policy.last_retrain_at + timedelta(seconds=policy.cooldown_seconds)
        if now < until:
            return (
                f"cooldown: the last retrain started at {policy.last_retrain_at.isoformat()}; "
                f"the next may start after {until.isoformat()}"
            )
    return None


def evaluate(
    session: Session,
    store: ArtifactStore,
    policy: RetrainingPolicy,
    *,
    now: datetime | None = None,
    manual: TriggerRequest | None = None,
    by: str | None = None,
) -> PolicyEvaluation:
    """One evaluation, recorded whatever it concludes. A manual trigger that cannot retrain
    (cooldown, a retrain running, no rows) is refused instead, and nothing is written."""
    now = now or utcnow()
    if manual is None:
        found = checks(session, store, policy, now)
    else:
        found = [Check(trigger="manual", fired=True, reason=f"requested by {by}")]
    fired = [c.trigger for c in found if c.fired]
    evaluation = PolicyEvaluation(
        policy_id=policy.id,
        evaluated_at=now,
        fired_by=fired,
        checks=[c.model_dump(mode="json") for c in found],
        overrides=manual.model_dump(mode="json", exclude_none=True) if manual else {},
        created_by=by,
        retrain_detail={},
    )
    if not fired:
        evaluation.outcome = "quiet"
        evaluation.reason = "; ".join(c.reason for c in found) or "no triggers configured"
        return _record(session, policy, evaluation)
    blocker = _blocked(session, policy, now)
    if blocker is not None and not (manual and manual.force and "cooldown" in blocker):
        if manual is not None:
            raise Conflict(f"not retraining now: {blocker}", code="retrain_blocked")
        evaluation.outcome, evaluation.reason = "coalesced", blocker
        return _record(session, policy, evaluation)
    evaluation.outcome = "fired"
    evaluation.reason = "; ".join(c.reason for c in found if c.fired)
    session.add(evaluation)
    session.flush()
    training = TrainingSpec.model_validate(policy.training)
    if manual is not None and manual.training is not None:
        training = manual.training
    window = policy.window
    if manual is not None and manual.window is not None:
        window = normalize_window(manual.window, ["body", "window"])
    try:
        retrain.start(
            session,
            store,
            policy,
            evaluation,
            now=now,
            window=window,
            training=training,
            hyperparameters=manual.hyperparameters if manual else None,
        )
    except Unprocessable as exc:
        if manual is not None:
            raise
        evaluation.retrain_status, evaluation.finished_at = "failed", now
        evaluation.retrain_detail = {"error": exc.message}
    return _record(session, policy, evaluation)


def _first_coalesced(session: Session, policy: RetrainingPolicy) -> int | None:
    """The first evaluation coalesced into the latest retrain (None if none was yet)."""
    fired = session.scalar(
        select(func.max(PolicyEvaluation.id)).where(
            PolicyEvaluation.policy_id == policy.id, PolicyEvaluation.outcome == "fired"
        )
    )
    return session.scalar(
        select(func.min(PolicyEvaluation.id)).where(
            PolicyEvaluation.policy_id == policy.id,
            PolicyEvaluation.outcome == "coalesced",
            PolicyEvaluation.id > (fired or 0),
        )
    )


def _record(
    session: Session, policy: RetrainingPolicy, evaluation: PolicyEvaluation
) -> PolicyEvaluation:
    """Keep the evaluation and say what it concluded. A trigger that keeps firing while a
    retrain runs, rolls out or cools down (a metric staying low through a canary) is
    coalesced on every check: each is kept, but `policy.coalesced` is sent for the first only,
    so subscribers hear of it once per retrain rather than at every tick."""
    earlier = _first_coalesced(session, policy) if evaluation.outcome == "coalesced" else None
    if earlier is not None:
        evaluation.reason += f" (already reported with evaluation #{earlier})"
    session.add(evaluation)
    session.flush()
    if evaluation.outcome != "quiet" and earlier is None:
        payload: dict[str, Any] = {
            "policy": policy.name,
            "evaluation": evaluation.id,
            "outcome": evaluation.outcome,
            "fired_by": evaluation.fired_by,
            "reason": evaluation.reason,
            "pipeline_run_id": evaluation.pipeline_run_id,
        }
        type_ = (
            EventType.policy_fired if evaluation.outcome == "fired" else EventType.policy_coalesced
        )
        events.record(session, type_, f"policy:{policy.name}", payload)
    return evaluation


def tick(
    session: Session, store: ArtifactStore, policy: RetrainingPolicy, now: datetime | None = None
) -> None:
    """What beat does for each policy: move its in-flight retrain along, then evaluate."""
    now = now or utcnow()
    running = retrain.in_flight(session, policy)
    if running is not None:
        retrain.follow_up(session, policy, running)
    if policy.enabled:
        evaluate(session, store, policy, now=now)
