"""Global importance of a version (mean |SHAP| over a sample of its reference data or of a
deployment's production window), computed by a job and cached per version and data digest,
and attribution drift between rankings. The per-row machinery lives in `service`."""

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import case, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.service import Principal
from app.core.artifacts import ArtifactStore
from app.core.db import utcnow
from app.core.durations import BODY, parse_duration
from app.core.errors import Conflict, NotFound, Unprocessable
from app.core.outbox import enqueue
from app.datasets import service as datasets
from app.datasets.models import DatasetVersion
from app.deployments import service as deployments
from app.explain import plots
from app.explain.models import FeatureImportance, ImportanceStatus
from app.explain.schemas import (
    AttributionDriftRead,
    ImportanceRead,
    ImportanceRequest,
    RankChange,
)
from app.explain.service import explainer_for, ready_version, request_frame, run_explainer
from app.ml import explain as shapley
from app.ml.tabular import TableFormatError, read_table
from app.monitoring.models import PredictionLog
from app.monitoring.service import logged_rows
from app.registry import service as registry
from app.registry.models import ModelVersion, RegisteredModel

IMPORTANCE_JOB = "explain.importance"


# -- global importance ------------------------------------------------------------------------


def production_sample(
    session: Session,
    store: ArtifactStore,
    version: ModelVersion,
    deployment: str,
    window: str,
    rows: int,
) -> DatasetVersion:
    """The latest logged inputs this version answered in a deployment, materialized as an
    immutable dataset version (`<deployment>-production`), so the importance computed on
    them is cached and traced by its digest like any other data."""
    served = deployments.get_or_raise(session, deployment)
    if not any(v.model_version_id == version.id for v in served.variants):
        raise Unprocessable(
            f"deployment {deployment!r} does not serve version {version.version}",
            details={"loc": ["body", "deployment"]},
        )
    since = utcnow() - parse_duration(window, "window", where=BODY)
    logged = session.scalars(
        select(PredictionLog.inputs)
        .where(
            PredictionLog.deployment == deployment,
            PredictionLog.model_version_id == version.id,
            PredictionLog.shadow.is_(False),
            PredictionLog.status == 200,
            PredictionLog.created_at >= since,
        )
        .order_by(PredictionLog.id.desc())
        .limit(rows)
    ).all()
    sample = [row for inputs in logged for row in logged_rows(inputs)][:rows]
    if not sample:
        raise Unprocessable(
            f"no predictions of version {version.version} were logged in {deployment!r} in the "
            f"last {window}; widen the window or check the deployment's log_sample_rate"
        )
    assert version.signature is not None
    columns = [c["name"] for c in version.signature["inputs"]]
    frame = pd.DataFrame(sample, columns=columns)
    return datasets.add_frame_version(session, store, f"{deployment}-production", frame)


def request_importance(
    session: Session,
    name: str,
    ref: str,
    body: ImportanceRequest,
    *,
    by: Principal,
    store: ArtifactStore | None = None,
) -> ImportanceRead:
    """A cached result for the same (version, data digest, sample size), or a new job."""
    model, version = ready_version(session, name, ref)
    source = "reference"
    if body.deployment is not None:
        assert store is not None
        dataset: DatasetVersion | None = production_sample(
            session, store, version, body.deployment, body.window, body.sample_rows
        )
        source = "production"
    else:
        dataset = (
            session.get(DatasetVersion, version.dataset_version_id)
            if version.dataset_version_id is not None
            else None
        )
    if dataset is None:
        raise Conflict(
            f"version {version.version} has no reference data; register it with "
            "dataset_version_id to compute global importance",
            code="no_reference_data",
        )
    key = (
        FeatureImportance.model_version_id == version.id,
        FeatureImportance.data_digest == dataset.digest,
        FeatureImportance.sample_rows == body.sample_rows,
    )
    row = session.scalar(select(FeatureImportance).where(*key).with_for_update())
    if row is not None and row.status != ImportanceStatus.failed and not body.refresh:
        return importance_read(row, model, version, cached=True)
    if row is None:
        row = FeatureImportance(
            model_version_id=version.id,
            source=source,
            data_digest=dataset.digest,
            dataset_version_id=dataset.id,
            sample_rows=body.sample_rows,
        )
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:  # a concurrent request created it: answer with that one
            found = session.scalar(select(FeatureImportance).where(*key))
            assert found is not None
            return importance_read(found, model, version, cached=True)
    elif row.status in (ImportanceStatus.pending, ImportanceStatus.running):
        return importance_read(row, model, version, cached=True)  # already on its way
    row.status = ImportanceStatus.pending
    row.status_message = None
    row.max_evals = body.max_evals
    row.requested_by = by.name
    row.updated_at = utcnow()
    session.flush()
    enqueue(session, IMPORTANCE_JOB, {"importance_id": row.id})
    return importance_read(row, model, version)


def get_importance(
    session: Session,
    name: str,
    ref: str,
    sample_rows: int | None = None,
    source: str | None = None,
) -> ImportanceRead:
    """The newest ready result for the version (or the newest request, if none is ready)."""
    model = registry.get_model_or_raise(session, name)
    version = registry.get_version_or_raise(session, model, ref)
    row = _importance_of(session, version, sample_rows, ready_only=False, source=source)
    if row is None:
        raise NotFound(
            f"no global importance for {model.name} version {version.version}; "
            f"compute it with POST /api/v1/models/{model.name}/versions/{version.version}"
            "/importance"
        )
    return importance_read(row, model, version)


def _importance_of(
    session: Session,
    version: ModelVersion,
    sample_rows: int | None,
    *,
    ready_only: bool,
    source: str | None = None,
) -> FeatureImportance | None:
    stmt = select(FeatureImportance).where(FeatureImportance.model_version_id == version.id)
    if source is not None:
        stmt = stmt.where(FeatureImportance.source == source)
    if sample_rows is not None:
        stmt = stmt.where(FeatureImportance.sample_rows == sample_rows)
    if ready_only:
        stmt = stmt.where(FeatureImportance.status == ImportanceStatus.ready)
    ready_first = case((FeatureImportance.status == ImportanceStatus.ready, 0), else_=1)
    return session.scalar(
        stmt.order_by(
            ready_first, FeatureImportance.computed_at.desc(), FeatureImportance.id.desc()
        ).limit(1)
    )


def importance_read(
    row: FeatureImportance, model: RegisteredModel, version: ModelVersion, *, cached: bool = False
) -> ImportanceRead:
    rate = (
        row.sample_size / row.duration_seconds if row.sample_size and row.duration_seconds else None
    )
    return ImportanceRead.model_validate(
        {
            "id": row.id,
            "model": model.name,
            "version": version.version,
            "status": row.status,
            "status_message": row.status_message,
            "source": row.source,
            "dataset_version_id": row.dataset_version_id,
            "data_digest": row.data_digest,
            "sample_rows": row.sample_rows,
            "sample_size": row.sample_size,
            "explainer": row.explainer,
            "output_space": row.output_space,
            "classes": row.classes,
            "features": row.features,
            "approximations": row.approximations,
            "duration_seconds": row.duration_seconds,
            "rows_per_second": rate,
            "cached": cached,
            "requested_by": row.requested_by,
            "created_at": row.created_at,
            "computed_at": row.computed_at,
        }
    )


@dataclass(frozen=True)
class ImportanceInputs:
    """What the job needs, read in a short transaction so the computation holds none."""

    importance_id: int
    version: ModelVersion
    dataset_uri: str
    dataset_format: str
    sample_rows: int
    seed: int
    max_evals: int | None


def reference_sample(
    store: ArtifactStore, inputs: ImportanceInputs, signature: dict[str, Any]
) -> pd.DataFrame:
    """A seeded sample of the reference data, typed exactly as a request's rows would be."""
    try:
        table = read_table(store.resolve(inputs.dataset_uri), inputs.dataset_format)  # type: ignore[arg-type]
    except (TableFormatError, OSError) as exc:
        raise Unprocessable(f"the reference data could not be read: {exc}") from exc
    columns = [c["name"] for c in signature["inputs"]]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise Unprocessable(f"the reference data lacks the model's columns {missing}")
    sample = table.sample(n=min(inputs.sample_rows, len(table)), random_state=inputs.seed)
    sample = sample[columns]
    values = sample.astype(object).where(sample.notna(), None).to_numpy().tolist()
    rows = [[v.item() if isinstance(v, np.generic) else v for v in row] for row in values]
    return request_frame(signature, {"dataframe_split": {"columns": columns, "data": rows}})


def compute_importance(store: ArtifactStore, inputs: ImportanceInputs) -> dict[str, Any]:
    """Mean |SHAP| per feature over the sample; the columns to store on the result row."""
    signature = inputs.version.signature
    assert signature is not None
    started = time.perf_counter()
    frame = reference_sample(store, inputs, signature)
    explainer = explainer_for(store, inputs.version)
    result = run_explainer(explainer, frame, max_evals=inputs.max_evals, max_work=None)
    return {
        "sample_size": len(frame),
        "explainer": result.explainer,
        "output_space": result.output_space,
        "classes": result.classes,
        "features": shapley.mean_abs(result),
        "approximations": result.approximations,
        "duration_seconds": time.perf_counter() - started,
    }


def importance_plot(session: Session, name: str, ref: str, *, fmt: plots.Format, top: int) -> bytes:
    model = registry.get_model_or_raise(session, name)
    version = registry.get_version_or_raise(session, model, ref)
    row = _ready_importance(session, model, version)
    assert row.features is not None
    items = [(f["feature"], float(f["mean_abs_shap"])) for f in row.features]
    title = (
        f"{model.name} v{version.version}: mean |SHAP| over {row.sample_size} rows "
        f"({row.explainer}, {row.output_space})"
    )
    return plots.importance_bar(items, title=title, fmt=fmt, top=top)


def _ready_importance(
    session: Session, model: RegisteredModel, version: ModelVersion, source: str = "reference"
) -> FeatureImportance:
    """The newest ready importance; if there is none, why: it failed (and the reason), it is
    still being computed, or it was never asked for."""
    row = _importance_of(session, version, None, ready_only=True, source=source)
    if row is not None:
        return row
    on = "its reference data" if source == "reference" else "a production window"
    endpoint = f"POST /api/v1/models/{model.name}/versions/{version.version}/importance"
    latest = _importance_of(session, version, None, ready_only=False, source=source)
    if latest is not None and latest.status == ImportanceStatus.failed:
        raise Conflict(
            f"global importance of version {version.version} on {on} failed: "
            f"{latest.status_message}; fix that and {endpoint} again",
            code="importance_failed",
            details={"importance_id": latest.id, "reason": latest.status_message},
        )
    if latest is not None:
        raise Conflict(
            f"global importance of version {version.version} on {on} is {latest.status}; "
            "wait for it to be ready",
            code="importance_not_ready",
            details={"importance_id": latest.id},
        )
    raise Conflict(
        f"version {version.version} has no computed global importance on {on} yet; "
        f"{endpoint} and wait for it to be ready",
        code="importance_not_ready",
    )


# -- attribution drift ------------------------------------------------------------------------


def attribution_drift(
    session: Session,
    name: str,
    ref: str,
    *,
    baseline: str | None,
    k: int | None,
    threshold: float,
    against: str = "versions",
) -> AttributionDriftRead:
    """Compare rankings of global importance (nDCG@k): this version against the baseline
    version's, or — `against=production` — this version on its latest production window
    against itself on its reference data."""
    model = registry.get_model_or_raise(session, name)
    candidate = registry.get_version_or_raise(session, model, ref)
    if against == "production":
        reference = candidate
        old = _ready_importance(session, model, candidate)
        new = _ready_importance(session, model, candidate, source="production")
    else:
        if baseline is None:
            raise Unprocessable(
                "name the baseline version to compare with, or ask against=production",
                details={"loc": ["query", "baseline"]},
            )
        reference = registry.get_version_or_raise(session, model, baseline)
        new, old = (
            _ready_importance(session, model, candidate),
            _ready_importance(session, model, reference),
        )
    assert new.features is not None and old.features is not None
    result = shapley.attribution_drift(
        {f["feature"]: f["mean_abs_shap"] for f in old.features},
        {f["feature"]: f["mean_abs_shap"] for f in new.features},
        k=k,
        threshold=threshold,
    )
    return AttributionDriftRead(
        model=model.name,
        version=candidate.version,
        baseline_version=reference.version,
        comparison=against,
        ndcg=result["ndcg"],
        k=k,
        threshold=threshold,
        drifted=result["drifted"],
        importance_id=new.id,
        baseline_importance_id=old.id,
        rank_changes=[RankChange(**change) for change in result["rank_changes"]],
    )
