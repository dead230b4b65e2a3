"""Explanations of registered model versions: per-row SHAP values, global importance (computed
by a job and cached per version and data digest), attribution drift between versions, plots.

Takes a session, raises AppError, never commits. The loaded model and its explainer are kept
per process (keyed by version id and artifact digest): loading a skops file and building Tree
SHAP's tables cost more than explaining a hundred rows.
"""

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy.orm import Session

from app.core.artifacts import ArtifactStore
from app.core.errors import AppError, Conflict, Unprocessable
from app.explain import plots
from app.explain.schemas import (
    Additivity,
    ExplainRequest,
    ExplanationRead,
    OutputExplanation,
    RowExplanation,
)
from app.ml import explain as shapley
from app.ml.model_files import ModelFileError, load_model
from app.ml.serving_contract import InputError, frame_from_payload
from app.registry import service as registry
from app.registry.models import ModelVersion, RegisteredModel, VersionStatus

MAX_ROWS = 1_000  # per request for Tree/Linear SHAP; more rows belong in the importance job
MAX_KERNEL_WORK = 2_000_000  # model predictions one request may cost the agnostic explainer
CACHE_SIZE = 8

_explainers: OrderedDict[tuple[int, str], shapley.ModelExplainer] = OrderedDict()
_explainers_lock = threading.Lock()


def _app_error(exc: shapley.ExplainError) -> AppError:
    return Unprocessable(exc.message, code=exc.code)


# -- versions, frames, explainers -------------------------------------------------------------


def ready_version(session: Session, name: str, ref: str) -> tuple[RegisteredModel, ModelVersion]:
    model = registry.get_model_or_raise(session, name)
    version = registry.get_version_or_raise(session, model, ref)
    if version.status != VersionStatus.ready or version.signature is None:
        raise Conflict(
            f"version {version.version} is {version.status.value}; only a ready version can "
            "be explained (wait for its registration job)"
        )
    return model, version


def request_frame(signature: dict[str, Any], payload: dict[str, Any]) -> pd.DataFrame:
    """Rows checked against the signature exactly as predict checks them."""
    try:
        return frame_from_payload(payload, signature)
    except InputError as exc:
        raise Unprocessable(exc.message, code="invalid_input", details=exc.details) from exc


def background_frame(
    signature: dict[str, Any], sample: dict[str, Any] | None
) -> pd.DataFrame | None:
    """The version's stored background rows (what Linear and Kernel SHAP integrate over)."""
    if not sample or not sample.get("rows"):
        return None
    split = {"columns": sample["columns"], "data": sample["rows"]}
    return request_frame(signature, {"dataframe_split": split})


def build_explainer(
    model: Any, signature: dict[str, Any], sample: dict[str, Any] | None
) -> shapley.ModelExplainer:
    features = [c["name"] for c in signature["inputs"]]
    try:
        return shapley.ModelExplainer(model, features, background_frame(signature, sample))
    except shapley.ExplainError as exc:
        raise _app_error(exc) from exc


def explainer_for(store: ArtifactStore, version: ModelVersion) -> shapley.ModelExplainer:
    """The version's explainer, built on first use in this process."""
    key = (version.id, version.artifact_digest)
    with _explainers_lock:
        if key in _explainers:
            _explainers.move_to_end(key)
            return _explainers[key]
    try:
        model = load_model(
            registry.artifact_path(store, version),
            digest=version.artifact_digest,
            types=version.artifact_types or [],
        )
    except (ModelFileError, OSError) as exc:
        raise Conflict(
            f"the model file of version {version.version} could not be loaded: {exc}",
            code="model_unloadable",
        ) from exc
    assert version.signature is not None
    built = build_explainer(model, version.signature, version.background_sample)
    with _explainers_lock:
        _explainers[key] = built
        while len(_explainers) > CACHE_SIZE:
            _explainers.popitem(last=False)
    return built


def run_explainer(
    explainer: shapley.ModelExplainer,
    frame: pd.DataFrame,
    *,
    max_evals: int | None,
    max_work: int | None,
) -> shapley.Explanation:
    try:
        return explainer.explain(frame, max_evals=max_evals, max_work=max_work)
    except shapley.ExplainError as exc:
        raise _app_error(exc) from exc
    except Exception as exc:  # the model's own failure on these rows (e.g. an unseen category)
        raise Unprocessable(
            f"the model failed on these rows: {type(exc).__name__}: {exc}"[:1000],
            code="model_error",
        ) from exc


# -- per-row explanations ---------------------------------------------------------------------


@dataclass(frozen=True)
class RowsExplained:
    model: RegisteredModel
    version: ModelVersion
    frame: pd.DataFrame
    explanation: shapley.Explanation
    outputs: list[int]  # which output columns (classes) to report


def _explain_rows(
    session: Session, store: ArtifactStore, name: str, ref: str, body: ExplainRequest
) -> RowsExplained:
    model, version = ready_version(session, name, ref)
    assert version.signature is not None
    frame = request_frame(version.signature, body.payload())
    explanation, outputs = explain_frame(explainer_for(store, version), frame, body)
    return RowsExplained(model, version, frame, explanation, outputs)


def explain_frame(
    explainer: shapley.ModelExplainer, frame: pd.DataFrame, body: ExplainRequest
) -> tuple[shapley.Explanation, list[int]]:
    """Explain checked rows within the request limits; also what a replica runs."""
    if explainer.kind != "kernel" and len(frame) > MAX_ROWS:
        raise Unprocessable(
            f"at most {MAX_ROWS} rows per explain request; got {len(frame)}. For importance "
            "over many rows use POST .../importance (a job)",
            code="too_many_rows",
        )
    explanation = run_explainer(
        explainer, frame, max_evals=body.max_evals, max_work=MAX_KERNEL_WORK
    )
    return explanation, _outputs(explanation, body)


def _outputs(explanation: shapley.Explanation, body: ExplainRequest) -> list[int]:
    width = explanation.values.shape[2]
    if body.output_class is None:
        return list(range(width))
    classes = explanation.classes
    if classes is None:
        raise Unprocessable(
            "output_class applies to classifiers; this model is a regressor", code="invalid_class"
        )
    found = [i for i, c in enumerate(classes) if str(c) == str(body.output_class)]
    if not found:
        raise Unprocessable(
            f"output_class {body.output_class!r} is not a class of the model: {classes}",
            code="invalid_class",
            details={"classes": classes},
        )
    return found


def explain(
    session: Session, store: ArtifactStore, name: str, ref: str, body: ExplainRequest
) -> ExplanationRead:
    done = _explain_rows(session, store, name, ref, body)
    return read_explanation(
        done.model.name, done.version.version, done.explanation, done.outputs, body
    )


def read_explanation(
    model: str,
    version: int,
    result: shapley.Explanation,
    outputs: list[int],
    body: ExplainRequest,
) -> ExplanationRead:
    features = result.features
    labels = result.classes
    rows = []
    for n in range(result.values.shape[0]):
        explained = [
            OutputExplanation(
                class_label=labels[k] if labels is not None else None,
                base_value=float(result.base_values[n, k]),
                output=float(result.outputs[n, k]),
                shap_values=dict(zip(features, result.values[n, :, k].tolist(), strict=True)),
            )
            for k in outputs
        ]
        rows.append(RowExplanation(row=n, outputs=explained))
    notes = list(result.notes)
    if body.max_evals is not None and result.explainer != "kernel":
        notes.append(f"max_evals ignored: the {result.explainer} explainer is exact")
    return ExplanationRead(
        model=model,
        version=version,
        explainer=result.explainer,
        output_space=result.output_space,
        features=features,
        classes=labels,
        additivity=Additivity(
            holds=result.additive, max_error=result.max_error, tolerance=result.tolerance
        ),
        approximate=result.approximate,
        approximations=result.approximations,
        notes=notes,
        max_evals=result.max_evals,
        background_rows=result.background_rows,
        rows=rows,
    )


def waterfall_plot(
    session: Session,
    store: ArtifactStore,
    name: str,
    ref: str,
    body: ExplainRequest,
    *,
    row: int,
    fmt: plots.Format,
) -> bytes:
    """One row's waterfall, for the chosen class (default: the last, the positive class)."""
    done = _explain_rows(session, store, name, ref, body)
    if not 0 <= row < len(done.frame):
        raise Unprocessable(f"row {row} is out of range; the request has {len(done.frame)} rows")
    result = done.explanation
    k = done.outputs[-1]
    values = done.frame.iloc[row]
    contributions = [
        (feature, values[feature], float(result.values[row, j, k]))
        for j, feature in enumerate(result.features)
    ]
    label = f", class {result.classes[k]}" if result.classes is not None else ""
    return plots.waterfall(
        contributions,
        base_value=float(result.base_values[row, k]),
        output=float(result.outputs[row, k]),
        title=f"{done.model.name} v{done.version.version}: row {row}{label} "
        f"({result.explainer} SHAP, {result.output_space})",
        fmt=fmt,
    )
