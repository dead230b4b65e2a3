"""A fired policy's retrain: materialize the window, run the pipeline (train, evaluate against
the champion on the window's holdout, register as `challenger`), then roll the challenger
out by the deployment's rollout policy; the champion alias moves only when that completes."""

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.service import Principal
from app.core.artifacts import ArtifactStore
from app.core.db import utcnow
from app.core.errors import AppError, Conflict
from app.core.security import Role
from app.deployments import rollouts
from app.deployments.models import Deployment, Rollout, RolloutState
from app.deployments.schemas import PromoteRequest
from app.events import service as events
from app.events.types import EventType, declared
from app.ml import signature as signatures
from app.pipelines import service as pipelines
from app.pipelines.models import Pipeline, PipelineRun, RunStatus, TaskRun
from app.pipelines.spec import PipelineSpec
from app.registry.models import ModelVersion
from app.training import data
from app.training.models import PolicyEvaluation, RetrainingPolicy
from app.training.schemas import DataSpec, TrainingSpec
from app.training.service import served_version

IN_FLIGHT = ("running", "rolling_out")
RetrainOutcome = Literal["rejected", "failed", "registered", "promoted", "rolled_back"]
"""How a retrain ends; each is emitted as `retrain.<outcome>`."""
CHALLENGER = "challenger"
CHAMPION = "champion"


def principal(policy: RetrainingPolicy) -> Principal:
    return Principal(token_id=0, name=f"policy:{policy.name}", role=Role.admin)


def in_flight(session: Session, policy: RetrainingPolicy) -> PolicyEvaluation | None:
    return session.scalar(
        select(PolicyEvaluation)
        .where(
            PolicyEvaluation.policy_id == policy.id,
            PolicyEvaluation.retrain_status.in_(IN_FLIGHT),
        )
        .order_by(PolicyEvaluation.id)
        .limit(1)
    )


def start(
    session: Session,
    store: ArtifactStore,
    policy: RetrainingPolicy,
    evaluation: PolicyEvaluation,
    *,
    now: datetime,
    window: dict[str, Any],
    training: TrainingSpec,
    hyperparameters: dict[str, Any] | None,
) -> None:
    """Select and keep the rows, then queue the pipeline run; Unprocessable when there is
    nothing sensible to learn from (the caller decides whether that is a 422 or a record)."""
    deployment = session.get(Deployment, policy.deployment_id)
    pipeline = session.get(Pipeline, policy.pipeline_id)
    assert deployment is not None and pipeline is not None
    version = served_version(session, deployment)
    assert version.target is not None
    spec = DataSpec.model_validate(policy.data)
    online = evaluation.fired_by == ["online"]
    after = policy.last_online_row_at if online else None
    frame = data.policy_rows(session, store, spec, deployment.name, version, now=now, after=after)
    if online:
        window = {"kind": "last_n", "n": max(len(frame), 1), "include_original": False}
    original = None
    if window.get("include_original"):
        original = data.original_rows(session, store, version)
        if original is None:
            window = {**window, "include_original": False}
    if window.get("method") == data.DRIFT_REPORT:
        start = data.drift_start(session, deployment.id)
        selection = data.since_drift(frame, window, start)
    else:
        selection = data.select_window(
            frame, window, target=version.target, now=now, original=original
        )
    if online and len(selection.rows):
        policy.last_online_row_at = selection.rows[data.TIME].max().to_pydatetime()
    kept = data.keep(session, store, policy.name, selection.rows, time_column=spec.time_column)
    params: dict[str, Any] = {"alias": CHALLENGER}
    excluded = _default_exclusion(pipeline, spec, training)
    if excluded:
        params["exclude_columns"] = excluded
    if training.mode != "scratch":
        params["continue_from"] = {
            "version_id": version.id,
            "method": "partial_fit" if training.mode == "online" else "warm_start",
            "add_estimators": training.add_estimators,
            "batch_size": training.batch_size,
        }
    if hyperparameters:
        params["hyperparameters"] = hyperparameters
    run = pipelines.start_run(
        session,
        pipeline,
        trigger="policy",
        params=params,
        dataset_version_id=kept.id,
        created_by=principal(policy).name,
    )
    policy.last_retrain_at = now
    evaluation.window = {**selection.info, "dataset_version": kept.version}
    evaluation.dataset_version_id = kept.id
    evaluation.pipeline_run_id = run.id
    evaluation.retrain_status = "running"
    evaluation.retrain_detail = {
        "champion_version": version.version,
        "mode": training.mode,
        "pipeline": pipeline.name,
    }


def _default_exclusion(pipeline: Pipeline, spec: DataSpec, training: TrainingSpec) -> list[str]:
    """The policy's time column orders the rows for windows; as a model input it would be a
    required column no client can sensibly fill, and a category to the next retrain. Left out
    of a fit from scratch unless the train task says which columns to leave out itself; a
    continued fit keeps the inputs of the version it continues."""
    if spec.time_column is None or training.mode != "scratch":
        return []
    train = next(t for t in PipelineSpec.model_validate(pipeline.spec).tasks if t.type == "train")
    return [] if "exclude_columns" in train.params else [spec.time_column]


def follow_up(session: Session, policy: RetrainingPolicy, evaluation: PolicyEvaluation) -> None:
    """Move an in-flight retrain along: its run ended → register / roll out / record why not;
    its rollout ended → promoted or rolled back."""
    if evaluation.retrain_status == "running":
        run = session.get(PipelineRun, evaluation.pipeline_run_id)
        if run is None:
            _finish(session, policy, evaluation, "failed", {"error": "the pipeline run is gone"})
        elif run.status.terminal:
            _run_ended(session, policy, evaluation, run)
    elif evaluation.retrain_status == "rolling_out":
        rollout = session.get(Rollout, evaluation.rollout_id)
        if rollout is None or rollout.state == RolloutState.running:
            return
        status: RetrainOutcome = (
            "promoted" if rollout.state == RolloutState.completed else "rolled_back"
        )
        _finish(session, policy, evaluation, status, {"rollout_reason": rollout.reason})


def _outputs(session: Session, run: PipelineRun, task_type: str) -> TaskRun | None:
    return session.scalar(
        select(TaskRun).where(TaskRun.pipeline_run_id == run.id, TaskRun.type == task_type)
    )


def _run_ended(
    session: Session, policy: RetrainingPolicy, evaluation: PolicyEvaluation, run: PipelineRun
) -> None:
    judged = _outputs(session, run, "evaluate")
    verdict = dict(judged.outputs) if judged is not None and judged.outputs else {}
    detail = {
        "verdict": verdict.get("verdict"),
        "reasons": verdict.get("reasons", []),
        "metrics": verdict.get("metrics"),
        "champion_metrics": verdict.get("champion_metrics"),
    }
    if run.status == RunStatus.rejected:
        _finish(session, policy, evaluation, "rejected", detail)
        return
    registered = _outputs(session, run, "register")
    if run.status != RunStatus.succeeded or registered is None or not registered.outputs:
        detail["error"] = run.error or f"the pipeline run ended {run.status.value}"
        _finish(session, policy, evaluation, "failed", detail)
        return
    evaluation.model_version_id = registered.outputs["version_id"]
    detail["challenger_version"] = registered.outputs["version"]
    if not policy.promote:
        _finish(session, policy, evaluation, "registered", detail)
        return
    deployment = session.get(Deployment, policy.deployment_id)
    assert deployment is not None
    ref = f"{registered.outputs['model']}/{registered.outputs['version']}"
    try:
        _refuse_breaking(session, deployment, evaluation.model_version_id, detail)
        rollout = rollouts.promote(
            session,
            deployment.name,
            PromoteRequest(model=ref, set_alias=CHAMPION),
            by=principal(policy),
        )
    except AppError as exc:
        _promote_failed(session, policy, evaluation, detail, exc.message)
        return
    evaluation.rollout_id = rollout.id
    evaluation.retrain_status = "rolling_out"
    evaluation.retrain_detail = {**evaluation.retrain_detail, **detail}


def _refuse_breaking(
    session: Session, deployment: Deployment, version_id: int | None, detail: dict[str, Any]
) -> None:
    """Conflict when the challenger's inputs or outputs changed in a way callers of what
    production serves would notice; the comparison goes in `detail` either way."""
    challenger = session.get(ModelVersion, version_id) if version_id is not None else None
    current = served_version(session, deployment)
    if challenger is None or not challenger.signature or not current.signature:
        return
    verdict = signatures.compare(current.signature, challenger.signature)
    detail["signature"] = {"against_version": current.version, **verdict}
    if verdict["verdict"] == "breaking":
        changes = "; ".join(_change_text(c) for c in verdict["changes"])
        raise Conflict(
            f"not promoted automatically: v{challenger.version}'s signature is breaking against "
            f"v{current.version}, which {deployment.name!r} serves ({changes}); promote it by "
            "hand once its callers are ready",
            code="breaking_signature",
        )


def _change_text(change: dict[str, Any]) -> str:
    """`ts: datetime -> string`, `city removed`, `classes: [0, 1] -> [0, 1, 2]`."""
    what = change.get("column", change["change"])
    if "from" in change:
        return f"{what}: {change['from']} -> {change['to']}"
    return f"{what} {change['change']}" if "column" in change else str(what)


def _promote_failed(
    session: Session,
    policy: RetrainingPolicy,
    evaluation: PolicyEvaluation,
    detail: dict[str, Any],
    reason: str,
) -> None:
    """The challenger stays registered; why it was not rolled out is recorded, shown on the
    policy and sent as its own event, so nobody has to read evaluations to learn of it."""
    detail["promote_error"] = reason
    _finish(session, policy, evaluation, "registered", detail)
    events.record(
        session,
        EventType.retrain_promote_failed,  # registered, but not rolled out
        f"policy:{policy.name}",
        {
            "policy": policy.name,
            "evaluation": evaluation.id,
            "deployment": _deployment_name(session, policy),
            "model_version_id": evaluation.model_version_id,
            "challenger_version": detail.get("challenger_version"),
            "reason": reason,
        },
        principal(policy).name,
    )


def _deployment_name(session: Session, policy: RetrainingPolicy) -> str | None:
    deployment = session.get(Deployment, policy.deployment_id)
    return deployment.name if deployment else None


def _finish(
    session: Session,
    policy: RetrainingPolicy,
    evaluation: PolicyEvaluation,
    status: RetrainOutcome,
    detail: dict[str, Any],
) -> None:
    evaluation.retrain_status = status
    evaluation.retrain_detail = {**evaluation.retrain_detail, **detail}
    evaluation.finished_at = utcnow()
    events.record(
        session,
        declared(f"retrain.{status}"),
        f"policy:{policy.name}",
        {
            "policy": policy.name,
            "evaluation": evaluation.id,
            "deployment": _deployment_name(session, policy),
            "model_version_id": evaluation.model_version_id,
            **{k: v for k, v in detail.items() if k in ("reasons", "error", "rollout_reason")},
        },
        principal(policy).name,
    )
