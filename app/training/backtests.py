"""Backtests: replay a labelled history through the policy and alternatives with the
pipeline's own estimator, so a policy is chosen from evidence."""

from typing import Any

import pandas as pd
from sqlalchemy.orm import Session

from app.core.artifacts import ArtifactStore
from app.core.durations import BODY, parse_duration
from app.core.errors import Unprocessable
from app.datasets import service as datasets
from app.deployments.models import Deployment
from app.ml import backtest, training
from app.pipelines.models import Pipeline
from app.pipelines.spec import ALLOWED_ESTIMATORS, PipelineSpec
from app.training.models import RetrainingPolicy
from app.training.schemas import BacktestRead, BacktestRequest, Triggers
from app.training.service import normalize_window, served_version

MAX_ROWS = 1_000_000


def replayable_triggers(policy: RetrainingPolicy) -> dict[str, Any]:
    """The policy's triggers in the backtest's terms; new data and manual have no meaning in
    a replay, and drift is judged on each step against the current model's training rows."""
    triggers = Triggers.model_validate(policy.triggers)
    replay: dict[str, Any] = {}
    if triggers.schedule is not None:
        replay["schedule"] = {"cron": triggers.schedule.cron}
    if triggers.performance is not None:
        rule = triggers.performance
        replay["performance"] = {
            "metric": rule.metric,
            **({"below": rule.below} if rule.below is not None else {"above": rule.above}),
            "min_samples": rule.min_samples,
            "window_seconds": parse_duration(rule.window, "window").total_seconds(),
        }
    if triggers.drift is not None:
        replay["drift"] = (
            {"features": triggers.drift.features} if triggers.drift.features else {"share": 0.5}
        )
    return replay


def _span(value: str | int, name: str) -> Any:
    return value if isinstance(value, int) else parse_duration(value, name, where=BODY)


def run(
    session: Session, store: ArtifactStore, policy: RetrainingPolicy, body: BacktestRequest
) -> BacktestRead:
    deployment = session.get(Deployment, policy.deployment_id)
    pipeline = session.get(Pipeline, policy.pipeline_id)
    assert deployment is not None and pipeline is not None
    target = served_version(session, deployment).target
    train = next(t for t in PipelineSpec.model_validate(pipeline.spec).tasks if t.type == "train")
    estimator = train.params.get("estimator")
    if not estimator:
        raise Unprocessable(
            "backtests refit the pipeline's estimator at every retrain; this pipeline trains "
            "with a repository entrypoint, which a replay cannot call"
        )
    if body.version is not None:
        stored = datasets.get_version_or_raise(session, body.dataset, body.version)
    else:
        stored = datasets.latest_version_or_raise(session, body.dataset)
    if stored.rows is not None and stored.rows > MAX_ROWS:
        raise Unprocessable(f"the history has {stored.rows} rows; backtests take {MAX_ROWS}")
    frame = datasets.read_version(store, stored)
    column = body.time_column
    if column in frame.columns and not pd.api.types.is_numeric_dtype(frame[column]):
        frame[column] = pd.to_datetime(frame[column], utc=True, errors="coerce")
    assert target is not None

    def fit(rows: pd.DataFrame) -> Any:
        return training.fit_builtin(
            rows,
            target=target,
            estimator=estimator,
            hyperparameters=dict(train.params.get("hyperparameters") or {}),
            preprocessing=train.params.get("preprocessing", "auto"),
            allowed=ALLOWED_ESTIMATORS,
        )

    alternatives = []
    if body.include_policy:
        alternatives.append(
            backtest.Alternative(
                name=policy.name,
                triggers=replayable_triggers(policy),
                window=policy.window,
                cooldown_seconds=policy.cooldown_seconds,
            )
        )
    for index, alt in enumerate(body.alternatives):
        window = (
            normalize_window(alt.window, ["body", "alternatives", index, "window"])
            if alt.window is not None
            else policy.window
        )
        cooldown = (
            parse_duration(alt.cooldown, "cooldown", where=["body", "alternatives", index])
            if alt.cooldown
            else None
        )
        alternatives.append(
            backtest.Alternative(
                name=alt.name,
                triggers=alt.triggers,
                window=window,
                cooldown_seconds=cooldown.total_seconds() if cooldown else 0,
            )
        )
    try:
        results = backtest.backtest(
            frame,
            time_column=column,
            label_column=target,
            fit=fit,
            alternatives=alternatives,
            step=_span(body.step, "step"),
            initial=_span(body.initial, "initial"),
        )
    except (ValueError, training.TrainingError) as exc:
        raise Unprocessable(f"backtest: {exc}") from exc
    return BacktestRead(
        policy=policy.name,
        dataset_version_id=stored.id,
        rows=len(frame),
        results=[r.to_dict() for r in results],
    )
