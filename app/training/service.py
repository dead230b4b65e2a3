"""Retraining policies: create, read, change, delete, with every reference checked up front
so a policy that could never retrain is a 422 now rather than a failed run at 3 a.m."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth.service import Principal
from app.core.db import utcnow
from app.core.durations import BODY, parse_duration
from app.core.errors import Conflict, NotFound, Unprocessable
from app.core.pagination import PageParams, keyset_page
from app.datasets import service as datasets
from app.datasets.models import Dataset
from app.deployments import service as deployments
from app.deployments.models import Deployment, VariantMode
from app.ml import training, windows
from app.monitoring.models import DriftReport
from app.pipelines import service as pipelines
from app.pipelines.models import Pipeline
from app.pipelines.spec import ALLOWED_ESTIMATORS, PipelineSpec
from app.registry.models import ModelVersion, RegisteredModel
from app.sources.models import DataSource
from app.training import data
from app.training.data import DRIFT_REPORT
from app.training.models import PolicyEvaluation, RetrainingPolicy
from app.training.schemas import (
    DataSpec,
    PolicyCreate,
    PolicyRead,
    PolicyUpdate,
    PromoteFailure,
    RetrainOutcome,
    TrainingSpec,
    Triggers,
)


def served_version(session: Session, deployment: Deployment) -> ModelVersion:
    """The version taking most of the live traffic: the one a retrain replaces."""
    live = [v for v in deployment.variants if v.mode == VariantMode.live and v.weight > 0]
    if not live:
        raise Conflict(f"deployment {deployment.name!r} has no live variant to retrain")
    version = session.get(ModelVersion, max(live, key=lambda v: v.weight).model_version_id)
    assert version is not None
    return version


def model_name(session: Session, version: ModelVersion) -> str:
    model = session.get(RegisteredModel, version.model_id)
    assert model is not None
    return model.name


def normalize_window(window: dict[str, Any], loc: list[str | int]) -> dict[str, Any]:
    """The stored JSON form of a window; `period: '30d'` is accepted for `seconds`, and a
    dynamic window may start at the drift reports instead of the error stream."""
    body = dict(window)
    if body.get("kind") == "dynamic" and body.get("method") == DRIFT_REPORT:
        return data.since_drift_spec(body, loc)
    if "period" in body:
        if "seconds" in body:
            raise Unprocessable("give `period` or `seconds`, not both", details={"loc": loc})
        body["seconds"] = parse_duration(
            str(body.pop("period")), "period", where=loc
        ).total_seconds()
    try:
        return windows.spec_to_dict(windows.spec_from_dict(body))
    except ValueError as exc:
        raise Unprocessable(f"window: {exc}", details={"loc": loc}) from exc


def _train_task(spec: PipelineSpec) -> dict[str, Any]:
    tasks = {t.type: t for t in spec.tasks}
    missing = [t for t in ("train", "evaluate", "register") if t not in tasks]
    if missing:
        raise Unprocessable(
            f"the pipeline needs train, evaluate and register tasks (a retrain is judged "
            f"against the champion before it is registered); it lacks {', '.join(missing)}",
            details={"loc": ["body", "pipeline"]},
        )
    return dict(tasks["train"].params)


def check_training(spec: TrainingSpec, train_params: dict[str, Any]) -> None:
    """Warm start and online learning need estimators that can continue; say which can."""
    if spec.mode == "scratch":
        return
    able = training.capabilities(ALLOWED_ESTIMATORS)
    need = "partial_fit" if spec.mode == "online" else "warm_start"
    if spec.add_estimators is not None:
        need = "add_estimators"
    estimator = train_params.get("estimator")
    if (
        spec.mode == "warm_start"
        and spec.add_estimators is None
        and estimator in able["add_estimators"]
    ):
        raise Unprocessable(
            f"warm starting {estimator} adds trees or boosting stages: set "
            "training.add_estimators (how many to add at each retrain)",
            details={"loc": ["body", "training", "add_estimators"]},
        )
    if estimator is not None and estimator not in able[need]:
        raise Unprocessable(
            f"training mode {spec.mode!r}"
            + (" with add_estimators" if need == "add_estimators" else "")
            + f" needs an estimator that supports {need}; the pipeline trains {estimator}. "
            f"Supported: {', '.join(sorted(able[need]))}",
            details={"loc": ["body", "training", "mode"]},
        )


def _check_triggers(session: Session, triggers: Triggers, version: ModelVersion) -> None:
    if triggers.schedule is not None:
        pipelines.validate_schedule(triggers.schedule.cron)
    if triggers.performance is not None:
        parse_duration(triggers.performance.window, "triggers.performance.window", where=BODY)
    if triggers.drift is not None and triggers.drift.features:
        known = {c["name"] for c in (version.signature or {}).get("inputs", [])}
        unknown = [f for f in triggers.drift.features if f not in known]
        if unknown:
            raise Unprocessable(
                f"triggers.drift.features: {unknown} are not inputs of the served model "
                f"({sorted(known)})",
                details={"loc": ["body", "triggers", "drift", "features"]},
            )
    if triggers.new_data is not None:
        data_source(session, triggers.new_data.data_source)


def data_source(session: Session, name: str) -> DataSource:
    source = session.scalar(select(DataSource).where(DataSource.name == name))
    if source is None:
        raise Unprocessable(
            f"data source {name!r} does not exist",
            details={"loc": ["body", "triggers", "new_data", "data_source"]},
        )
    return source


def _check_data(session: Session, data: DataSpec) -> None:
    if (
        data.source == "dataset"
        and session.scalar(select(Dataset.id).where(Dataset.name == data.dataset)) is None
    ):
        raise Unprocessable(
            f"dataset {data.dataset!r} does not exist", details={"loc": ["body", "data", "dataset"]}
        )


def _validate(
    session: Session, policy: RetrainingPolicy, deployment: Deployment, pipeline: Pipeline
) -> None:
    version = served_version(session, deployment)
    if not version.target:
        raise Unprocessable(
            f"the served version {version.version} has no target column recorded; register it "
            "with `target` so feedback labels have a column to go in",
            details={"loc": ["body", "deployment"]},
        )
    spec = PipelineSpec.model_validate(pipeline.spec)
    train_params = _train_task(spec)
    name = model_name(session, version)
    registered = next(t.params.get("model") for t in spec.tasks if t.type == "register")
    if registered != name:
        raise Unprocessable(
            f"the pipeline registers {registered!r} but deployment {deployment.name!r} serves "
            f"{name!r}; the challenger must be a version of the served model",
            details={"loc": ["body", "pipeline"]},
        )
    target = train_params.get("target")
    if target is not None and target != version.target:
        raise Unprocessable(
            f"the pipeline trains on target {target!r} but the served version predicts "
            f"{version.target!r}; the window's labels go in {version.target!r}",
            details={"loc": ["body", "pipeline"]},
        )
    check_training(TrainingSpec.model_validate(policy.training), train_params)
    _check_triggers(session, Triggers.model_validate(policy.triggers), version)
    _check_data(session, DataSpec.model_validate(policy.data))


def _arm(policy: RetrainingPolicy, now: datetime) -> None:
    """Next fire times of the clock-driven triggers, from now."""
    schedule = (policy.triggers.get("schedule") or {}).get("cron")
    policy.next_schedule_at = pipelines.next_fire(schedule, now) if schedule else None
    every = policy.training.get("publish_every")
    policy.next_online_at = now + parse_duration(every, "publish_every") if every else None


def _skip_existing_evidence(
    session: Session, policy: RetrainingPolicy, deployment: Deployment
) -> None:
    """A new policy reacts to drift reports and dataset versions that come after it."""
    policy.last_drift_report_id = session.scalar(
        select(func.max(DriftReport.id)).where(DriftReport.deployment_id == deployment.id)
    )
    new_data = policy.triggers.get("new_data")
    if new_data:
        source = data_source(session, new_data["data_source"])
        policy.last_dataset_version_id = datasets.latest_version_id(session, source.dataset_id)


def create(session: Session, data: PolicyCreate, *, by: Principal) -> RetrainingPolicy:
    if session.scalar(select(RetrainingPolicy.id).where(RetrainingPolicy.name == data.name)):
        raise Conflict(f"a policy named {data.name!r} already exists")
    deployment = deployments.get_or_raise(session, data.deployment)
    deployments.require_deployer(deployment.environment, by)
    pipeline = pipelines.get_or_raise(session, data.pipeline)
    policy = RetrainingPolicy(
        name=data.name,
        deployment_id=deployment.id,
        pipeline_id=pipeline.id,
        triggers=data.triggers.model_dump(mode="json", exclude_none=True),
        window=normalize_window(data.window, ["body", "window"]),
        data=data.data.model_dump(mode="json"),
        training=data.training.model_dump(mode="json"),
        cooldown_seconds=int(parse_duration(data.cooldown, "cooldown", where=BODY).total_seconds()),
        promote=data.promote,
        enabled=data.enabled,
        created_by=by.name,
    )
    _validate(session, policy, deployment, pipeline)
    _arm(policy, utcnow())
    _skip_existing_evidence(session, policy, deployment)
    session.add(policy)
    session.flush()
    return policy


def get_or_raise(session: Session, policy_id: int, *, for_update: bool = False) -> RetrainingPolicy:
    policy = session.get(RetrainingPolicy, policy_id, with_for_update=for_update)
    if policy is None:
        raise NotFound(f"retraining policy {policy_id} does not exist")
    return policy


def list_policies(
    session: Session, page: PageParams, deployment: str | None
) -> tuple[Sequence[RetrainingPolicy], str | None]:
    stmt = select(RetrainingPolicy)
    if deployment is not None:
        stmt = stmt.join(Deployment).where(Deployment.name == deployment)
    return keyset_page(session, stmt, RetrainingPolicy.id, page)


def update(
    session: Session, policy_id: int, data: PolicyUpdate, *, by: Principal
) -> RetrainingPolicy:
    policy = get_or_raise(session, policy_id, for_update=True)
    deployment, pipeline = _parents(session, policy)
    deployments.require_deployer(deployment.environment, by)
    fields = data.model_fields_set
    if "triggers" in fields and data.triggers is not None:
        policy.triggers = data.triggers.model_dump(mode="json", exclude_none=True)
    if "window" in fields and data.window is not None:
        policy.window = normalize_window(data.window, ["body", "window"])
    if "data" in fields and data.data is not None:
        policy.data = data.data.model_dump(mode="json")
    if "training" in fields and data.training is not None:
        policy.training = data.training.model_dump(mode="json")
    if "cooldown" in fields and data.cooldown is not None:
        policy.cooldown_seconds = int(
            parse_duration(data.cooldown, "cooldown", where=BODY).total_seconds()
        )
    for flag in ("promote", "enabled"):
        if flag in fields and getattr(data, flag) is not None:
            setattr(policy, flag, getattr(data, flag))
    _validate(session, policy, deployment, pipeline)
    if fields & {"triggers", "training", "enabled"}:
        _arm(policy, utcnow())
    session.flush()
    return policy


def delete(session: Session, policy_id: int, *, by: Principal) -> None:
    policy = get_or_raise(session, policy_id, for_update=True)
    deployment, _ = _parents(session, policy)
    deployments.require_deployer(deployment.environment, by)
    session.delete(policy)
    session.flush()


def _parents(session: Session, policy: RetrainingPolicy) -> tuple[Deployment, Pipeline]:
    deployment = session.get(Deployment, policy.deployment_id)
    pipeline = session.get(Pipeline, policy.pipeline_id)
    assert deployment is not None and pipeline is not None  # both cascade-delete the policy
    return deployment, pipeline


def to_read(session: Session, policy: RetrainingPolicy) -> PolicyRead:
    deployment, pipeline = _parents(session, policy)
    return PolicyRead(
        id=policy.id,
        name=policy.name,
        deployment=deployment.name,
        pipeline=pipeline.name,
        triggers=policy.triggers,
        window=policy.window,
        data=policy.data,
        training=policy.training,
        cooldown_seconds=policy.cooldown_seconds,
        promote=policy.promote,
        enabled=policy.enabled,
        next_schedule_at=policy.next_schedule_at,
        next_online_at=policy.next_online_at,
        last_retrain_at=policy.last_retrain_at,
        last_retrain=_last_retrain(session, policy),
        last_promote_failure=_last_promote_failure(session, policy),
        created_by=policy.created_by,
        created_at=policy.created_at,
        updated_at=policy.updated_at,
    )


def _retrains(
    session: Session, policy: RetrainingPolicy, status: str | None, limit: int
) -> list[PolicyEvaluation]:
    stmt = select(PolicyEvaluation).where(PolicyEvaluation.policy_id == policy.id)
    if status is None:
        stmt = stmt.where(PolicyEvaluation.retrain_status.is_not(None))
    else:
        stmt = stmt.where(PolicyEvaluation.retrain_status == status)
    return list(session.scalars(stmt.order_by(PolicyEvaluation.id.desc()).limit(limit)))


def _outcome_reason(detail: dict[str, Any]) -> str | None:
    for key in ("promote_error", "error", "rollout_reason"):
        if detail.get(key):
            return str(detail[key])
    return "; ".join(map(str, detail.get("reasons") or [])) or None


def _last_retrain(session: Session, policy: RetrainingPolicy) -> RetrainOutcome | None:
    found = _retrains(session, policy, None, 1)
    if not found:
        return None
    latest = found[0]
    detail = latest.retrain_detail or {}
    return RetrainOutcome(
        evaluation_id=latest.id,
        status=latest.retrain_status,
        started_at=latest.evaluated_at,
        finished_at=latest.finished_at,
        pipeline_run_id=latest.pipeline_run_id,
        challenger_version=detail.get("challenger_version"),
        reason=_outcome_reason(detail) if latest.retrain_status != "promoted" else None,
    )


def _last_promote_failure(session: Session, policy: RetrainingPolicy) -> PromoteFailure | None:
    """A failed promotion leaves its challenger `registered` with a `promote_error`."""
    for evaluation in _retrains(session, policy, "registered", 20):
        error = (evaluation.retrain_detail or {}).get("promote_error")
        if error:
            return PromoteFailure(
                evaluation_id=evaluation.id,
                at=evaluation.finished_at,
                challenger_version=evaluation.retrain_detail.get("challenger_version"),
                reason=str(error),
            )
    return None


def list_evaluations(
    session: Session, policy_id: int, page: PageParams, outcome: str | None
) -> tuple[Sequence[PolicyEvaluation], str | None]:
    get_or_raise(session, policy_id)
    stmt = select(PolicyEvaluation).where(PolicyEvaluation.policy_id == policy_id)
    if outcome is not None:
        stmt = stmt.where(PolicyEvaluation.outcome == outcome)
    return keyset_page(session, stmt, PolicyEvaluation.id, page)
