"""Registry jobs: verify and describe a new version; build its serving bundle."""

import logging
from typing import Any, Literal

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session

from app.core.jobs import JobContext, job
from app.datasets import service as datasets
from app.datasets.models import DatasetVersion
from app.ml import signature as signatures
from app.ml.model_files import ModelFileError, load_model
from app.ml.serving_contract import frame_from_payload
from app.ml.tabular import TableFormatError
from app.registry import packaging, service
from app.registry.models import ModelVersion, PackageStatus, RegisteredModel, VersionStatus

logger = logging.getLogger(__name__)
BACKGROUND_ROWS = 100
BACKGROUND_SEED = 0
SignatureOrigin = Literal["declared", "dataset", "model"]


class VersionRejected(Exception):
    """The version cannot become ready; the message is shown to the user as status_message."""


@job(service.FINALIZE_JOB)
def finalize_version(session: Session, ctx: JobContext, version_id: int) -> None:
    version = session.get(ModelVersion, version_id, with_for_update=True)
    if version is None or version.status != VersionStatus.pending:
        return  # already done (or deleted): delivery is at least once
    try:
        _describe(session, ctx, version)
    except VersionRejected as exc:
        service.set_status(session, version, VersionStatus.failed, str(exc))
        return
    service.set_status(session, version, VersionStatus.ready, None)


def _describe(session: Session, ctx: JobContext, version: ModelVersion) -> None:
    try:
        model = load_model(
            service.artifact_path(ctx.artifacts, version),
            digest=version.artifact_digest,
            types=version.artifact_types or [],
        )
    except (ModelFileError, OSError) as exc:
        raise VersionRejected(f"the model file could not be loaded safely: {exc}") from exc
    except Exception as exc:
        raise VersionRejected(
            f"the model file could not be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    version.model_class = f"{type(model).__module__}.{type(model).__qualname__}"
    if not hasattr(model, "predict"):
        raise VersionRejected(
            f"{version.model_class} has no predict(); register a fitted estimator"
        )

    dataset = (
        session.get(DatasetVersion, version.dataset_version_id)
        if version.dataset_version_id
        else None
    )
    inputs, origin = _inputs(model, version, dataset)
    missing = signatures.missing_features(model, inputs)
    if missing:
        raise VersionRejected(f"the model was fitted on columns the signature lacks: {missing}")
    version.signature = {"inputs": inputs, "output": signatures.output_of(model)}
    if dataset is not None:
        version.background_sample = _background_sample(
            ctx, dataset, [c["name"] for c in inputs], model
        )
    else:
        _check_predicts_on_signature(model, version.signature, origin)
    model_row = session.get(RegisteredModel, version.model_id)
    assert model_row is not None
    current = service.champion(session, model_row)
    if current is not None and current.id != version.id and current.signature:
        verdict = signatures.compare(current.signature, version.signature)
        version.compatibility = {"against_version": current.version, **verdict}
    else:
        version.compatibility = {"against_version": None, "verdict": "no_champion", "changes": []}


def _inputs(
    model: Any, version: ModelVersion, dataset: DatasetVersion | None
) -> tuple[list[dict[str, Any]], SignatureOrigin]:
    if version.signature and version.signature.get("inputs"):
        declared: list[dict[str, Any]] = version.signature["inputs"]
        return declared, "declared"
    if dataset is not None:
        exclude = [version.target] if version.target else []
        return signatures.from_schema(dataset.schema["columns"], exclude=exclude), "dataset"
    inferred = signatures.from_model(model)
    if inferred is None:
        raise VersionRejected(
            "no signature: link the training data (dataset_version_id and target) "
            "or pass a signature"
        )
    return inferred, "model"


def _check_predicts_on_signature(
    model: Any, signature: dict[str, Any], origin: SignatureOrigin
) -> None:
    """Without training rows, predict on a row of the signature's types built as serving
    builds it: a signature the model cannot answer must never be ready."""
    try:
        frame = frame_from_payload({"rows": signatures.probe_rows(signature["inputs"])}, signature)
        model.predict(frame)
    except Exception as exc:  # any failure of the model itself, as in its own training check
        failure = f"{type(exc).__name__}: {exc}"
        if origin == "model":
            raise VersionRejected(
                "the signature inferred from the model's fitted column names (every column a "
                f"float) does not fit the model: predicting on a row of it fails ({failure}); "
                "link the training data (dataset_version_id and target) or declare a signature"
            ) from exc
        raise VersionRejected(
            f"the model fails to predict on a row of the declared signature's types ({failure}); "
            "correct the declared types, or link the training data (dataset_version_id and "
            "target) so the check uses its rows"
        ) from exc


def _background_sample(
    ctx: JobContext, dataset: DatasetVersion, columns: list[str], model: Any
) -> dict[str, Any]:
    """A small seeded sample of the training rows, checked by predicting on it."""
    try:
        frame = datasets.read_version(ctx.artifacts, dataset)
    except (TableFormatError, OSError) as exc:
        raise VersionRejected(f"the training dataset could not be read: {exc}") from exc
    sample = frame.sample(n=min(BACKGROUND_ROWS, len(frame)), random_state=BACKGROUND_SEED)[columns]
    try:
        model.predict(sample)
    except Exception as exc:
        raise VersionRejected(
            f"the model fails to predict on its own training data: {type(exc).__name__}: {exc}"
        ) from exc
    values = sample.astype(object).where(sample.notna(), None).to_numpy().tolist()
    rows = [[_json_value(v) for v in row] for row in values]
    return {"columns": columns, "rows": rows, "seed": BACKGROUND_SEED, "source_rows": len(frame)}


def _json_value(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value.item() if isinstance(value, np.generic) else value


@job(packaging.PACKAGE_JOB)
def package_version(session: Session, ctx: JobContext, version_id: int) -> None:
    version = session.get(ModelVersion, version_id, with_for_update=True)
    if version is None or version.package_status != PackageStatus.pending:
        return
    model = session.get(RegisteredModel, version.model_id)
    assert model is not None
    packaging.build(session, ctx, model, version)
