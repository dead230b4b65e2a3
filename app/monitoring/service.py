"""Feedback (ground truth that arrives after the prediction, joined to it by request id) and
what it tells: quality over time and fairness across groups."""

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db import upsert, utcnow
from app.core.errors import Unprocessable, invalid_fields
from app.deployments import service as deployments
from app.deployments.schemas import FeedbackAccepted, FeedbackBatch, FeedbackItem
from app.ml import quality
from app.monitoring import repository
from app.monitoring.labels import LabelKind, kind_of
from app.monitoring.models import Feedback, PredictionLog
from app.monitoring.schemas import Fairness, Performance, PerformancePoint
from app.monitoring.windows import Window
from app.registry.models import ModelVersion

MAX_ROWS = 500_000  # logged requests one quality query reads; a wider window needs sampling
MAX_PROBLEMS = 100  # bad labels named in one answer


def record_feedback(
    session: Session, deployment: str, body: FeedbackItem | FeedbackBatch
) -> FeedbackAccepted:
    """Idempotent per request id: sending feedback again replaces it (the latest label wins).
    Feedback may arrive before its prediction log is written; it joins once that lands."""
    served = deployments.get_or_raise(session, deployment)
    items = body.items if isinstance(body, FeedbackBatch) else [body]
    latest = {item.request_id: item for item in items}
    answered = repository.answering_versions(session, deployment, list(latest))
    versions = {v.model_version_id for v in served.variants}.union(*answered.values())
    kind = kind_of(_version_outputs(session, versions).values())
    checked = _checked_labels(items, kind, batch=isinstance(body, FeedbackBatch))
    rows = [
        {
            "deployment": deployment,
            "request_id": item.request_id,
            "labels": checked[id(item)],
            "reward": item.reward,
            "created_at": utcnow(),
        }
        for item in latest.values()
    ]
    upsert(
        session, Feedback, rows, ["deployment", "request_id"], ["labels", "reward", "created_at"]
    )
    return FeedbackAccepted(accepted=len(rows), matched=len(answered))


def _checked_labels(
    items: list[FeedbackItem], kind: LabelKind | None, *, batch: bool
) -> dict[int, list[Any] | None]:
    """Each item's labels as the model names its classes, keyed by id(item); every label the
    model cannot have predicted is refused, all named at once."""
    checked: dict[int, list[Any] | None] = {}
    problems: list[tuple[list[int | str], str]] = []
    for index, item in enumerate(items):
        at: list[int | str] = ["body", "items", index] if batch else ["body"]
        given = item.labels if item.labels is not None else [item.label]
        if item.labels is None and item.label is None:
            checked[id(item)] = None
            continue
        values = []
        for position, label in enumerate(given):
            loc = [*at, "labels", position] if item.labels is not None else [*at, "label"]
            if kind is not None and not kind.accepts(label):
                problems.append((loc, kind.problem(label)))
            values.append(label if kind is None else kind.canonical(label))
        checked[id(item)] = values
    if problems:
        raise invalid_fields(problems[:MAX_PROBLEMS])
    return checked


def _version_outputs(session: Session, version_ids: set[int]) -> dict[int, dict[str, Any]]:
    rows = session.execute(
        select(ModelVersion.id, ModelVersion.signature).where(ModelVersion.id.in_(version_ids))
    )
    return {row.id: (row.signature or {}).get("output", {}) for row in rows}


def labelled_requests(
    session: Session,
    deployment: str,
    span: Window,
    variant: str | None,
    *,
    labelled_only: bool = False,
    newest_first: bool = False,
    limit: int = MAX_ROWS,
) -> list[Any]:
    """Answered requests of the window with their feedback labels (None when unlabelled);
    `newest_first` keeps the most recent ones when the limit cuts."""
    join = PredictionLog.deployment == Feedback.deployment
    stmt = (
        select(
            PredictionLog.created_at,
            PredictionLog.variant,
            PredictionLog.model_version_id,
            PredictionLog.inputs,
            PredictionLog.outputs,
            Feedback.labels,
        )
        .join(
            Feedback,
            join & (Feedback.request_id == PredictionLog.request_id),
            isouter=not labelled_only,
        )
        .where(
            PredictionLog.deployment == deployment,
            PredictionLog.shadow.is_(False),
            PredictionLog.status == 200,
            PredictionLog.created_at >= span.start,
            PredictionLog.created_at < span.end,
        )
        .order_by(PredictionLog.created_at.desc() if newest_first else PredictionLog.created_at)
        .limit(limit)
    )
    if variant is not None:
        stmt = stmt.where(PredictionLog.variant == variant)
    return list(session.execute(stmt))


def performance(
    session: Session, deployment: str, span: Window, variant: str | None
) -> Performance:
    """Per bucket and variant, the quality of the predictions that got labels."""
    deployments.get_or_raise(session, deployment)
    rows = [
        r
        for r in labelled_requests(session, deployment, span, variant, labelled_only=True)
        if r.labels
    ]
    outputs = _version_outputs(session, {r.model_version_id for r in rows})
    kinds = {version: kind_of([output]) for version, output in outputs.items()}
    groups: dict[tuple[str, datetime], dict[str, list[Any]]] = defaultdict(
        lambda: {"labels": [], "predictions": [], "probabilities": [], "version": []}
    )
    ignored = 0
    for row in rows:
        predictions = (row.outputs or {}).get("predictions") or []
        kind = kinds.get(row.model_version_id)
        if len(predictions) != len(row.labels) or (
            kind is not None and not all(kind.accepts(v) for v in row.labels)
        ):
            ignored += 1  # labels the model could not have predicted are not evidence
            continue
        group = groups[(row.variant, span.bucket(row.created_at))]
        group["labels"].extend(row.labels if kind is None else map(kind.canonical, row.labels))
        group["predictions"].extend(predictions)
        group["probabilities"].extend((row.outputs or {}).get("probabilities") or [])
        group["version"].append(row.model_version_id)
    output_kind = "classification"
    points = []
    for (name, at), group in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        output = outputs.get(group["version"][0], {})
        output_kind = output.get("kind", "classification")
        if output_kind == "regression":
            values = quality.regression(group["labels"], group["predictions"])
        else:
            complete = len(group["probabilities"]) == len(group["labels"])
            seen = {str(v) for v in group["labels"] + group["predictions"]}
            values = quality.classification(
                group["labels"],
                group["predictions"],
                group["probabilities"] if complete else None,
                output.get("classes") or sorted(seen),
            )
        points.append(
            PerformancePoint(at=at, variant=name, labelled=len(group["labels"]), metrics=values)
        )
    return Performance(
        deployment=deployment,
        kind=output_kind,
        ignored=ignored,
        start=span.start,
        end=span.end,
        step_seconds=int(span.step.total_seconds()),
        points=points,
    )


def quality_over(
    session: Session, deployment: str, span: Window, metric: str, variant: str | None
) -> tuple[float | None, int]:
    """One quality metric over the whole window (buckets weighted by their labelled rows),
    and how many labelled rows it stands on."""
    points = performance(session, deployment, span, variant).points
    weighted = [(float(v), p.labelled) for p in points if (v := p.metrics.get(metric)) is not None]
    total = sum(n for _, n in weighted)
    return (sum(v * n for v, n in weighted) / total if total else None), total


def logged_rows(inputs: Any) -> list[dict[str, Any]]:
    """The rows of a logged request body, whichever shape it came in."""
    if not isinstance(inputs, dict):
        return []
    if isinstance(inputs.get("dataframe_split"), dict):
        split = inputs["dataframe_split"]
        return [dict(zip(split["columns"], row, strict=False)) for row in split.get("data", [])]
    rows = inputs.get("rows", inputs.get("instances"))
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def fairness(
    session: Session,
    deployment: str,
    span: Window,
    attribute: str,
    positive: Any,
    min_group_size: int,
    variant: str | None,
) -> Fairness:
    deployments.get_or_raise(session, deployment)
    rows = labelled_requests(session, deployment, span, variant)
    groups, predictions, labels = [], [], []
    seen_columns: set[str] = set()
    for row in rows:
        answered = (row.outputs or {}).get("predictions") or []
        inputs = logged_rows(row.inputs)
        if len(inputs) != len(answered):
            continue
        truth = row.labels if row.labels and len(row.labels) == len(answered) else None
        for index, values in enumerate(inputs):
            seen_columns.update(values)
            if attribute not in values:
                continue
            groups.append(values[attribute])
            predictions.append(answered[index])
            labels.append(None if truth is None else truth[index])
    if rows and not groups:
        raise Unprocessable(
            f"attribute {attribute!r} is not among the logged inputs {sorted(seen_columns)}",
            details={"loc": ["query", "attribute"]},
        )
    if positive is None:
        classes = next(
            iter(_version_outputs(session, {r.model_version_id for r in rows}).values()), {}
        ).get("classes")
        if not classes or len(classes) != 2:
            raise Unprocessable(
                "name the positive prediction (`positive`): the model is not a binary classifier",
                details={"loc": ["query", "positive"]},
            )
        positive = classes[1]
    result = quality.fairness(groups, predictions, labels, positive, min_group_size)
    return Fairness(
        deployment=deployment,
        attribute=attribute,
        positive=positive,
        start=span.start,
        end=span.end,
        **result,
    )
