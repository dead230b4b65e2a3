"""Score a model on labelled rows and decide whether it may be blessed.

Metrics are plain finite floats so they can be stored and compared without special cases: a
metric that cannot be computed (no predict_proba, one class present, user predictions of the
wrong kind) is left out, never reported as NaN. The gate turns metrics, thresholds and the
champion's metrics into a verdict with the reasons a user needs to act on a rejection.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
)

from app.ml.training import TrainingError, target_array

Task = Literal["classification", "regression"]

HIGHER_IS_BETTER = frozenset({"accuracy", "precision", "recall", "f1", "roc_auc", "r2"})
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})


def task_of(model: Any) -> Task:
    """A model with classes_ is a classifier (pipelines expose their final step's classes_)."""
    return "classification" if getattr(model, "classes_", None) is not None else "regression"


def _put(metrics: dict[str, float], name: str, compute: Callable[[], Any]) -> None:
    try:
        value = float(compute())
    except (ValueError, TypeError, IndexError):
        return
    if math.isfinite(value):
        metrics[name] = value


def _probabilities(model: Any, features: pd.DataFrame) -> np.ndarray[Any, Any] | None:
    if not callable(getattr(model, "predict_proba", None)):
        return None
    try:
        proba = np.asarray(model.predict_proba(features), dtype=float)
    except (AttributeError, ValueError, TypeError):
        return None
    return proba if proba.ndim == 2 else None


def _classification(
    model: Any, features: pd.DataFrame, y: np.ndarray[Any, Any], predicted: np.ndarray[Any, Any]
) -> dict[str, float]:
    classes = list(model.classes_)
    present = set(y.tolist())
    binary = len(classes) == 2 and present <= set(classes)
    averaging: dict[str, Any] = (
        {"average": "binary", "pos_label": classes[1]} if binary else {"average": "macro"}
    )
    metrics: dict[str, float] = {}
    _put(metrics, "accuracy", lambda: accuracy_score(y, predicted))
    for name, score in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        _put(metrics, name, partial(score, y, predicted, zero_division=0, **averaging))
    proba = _probabilities(model, features)
    if proba is None or proba.shape[1] != len(classes):
        return metrics
    if len(present) >= 2:
        if binary:
            _put(metrics, "roc_auc", lambda: roc_auc_score(y == classes[1], proba[:, 1]))
        else:
            _put(
                metrics,
                "roc_auc",
                lambda: roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes),
            )
    _put(metrics, "log_loss", lambda: log_loss(y, proba, labels=classes))
    return metrics


def _regression(y: np.ndarray[Any, Any], predicted: np.ndarray[Any, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    truth = y.astype(float)
    _put(metrics, "rmse", lambda: root_mean_squared_error(truth, predicted))
    _put(metrics, "mae", lambda: mean_absolute_error(truth, predicted))
    if len(truth) >= 2:
        _put(metrics, "r2", lambda: r2_score(truth, predicted))
    return metrics


def evaluate(model: Any, frame: pd.DataFrame, target: str) -> dict[str, float]:
    """Classification or regression metrics of `model` on the labelled rows of `frame`."""
    if target not in frame.columns:
        raise TrainingError(f"target column {target!r} is not in the evaluation data")
    rows = frame[frame[target].notna()]
    if rows.empty:
        raise TrainingError(f"no rows with a value in {target!r} to evaluate on")
    features = rows.drop(columns=[target])
    y = target_array(rows[target])
    try:
        predicted = np.asarray(model.predict(features))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TrainingError(f"the model could not predict on the evaluation rows: {exc}") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined-metric warnings: those metrics are dropped
        if task_of(model) == "classification":
            return _classification(model, features, y, predicted)
        return _regression(y, predicted)


def direction(metric: str) -> Literal["higher", "lower"]:
    """Which way is better; a train_/holdout_ prefix is ignored."""
    base = metric.removeprefix("holdout_").removeprefix("train_")
    if base in HIGHER_IS_BETTER:
        return "higher"
    if base in LOWER_IS_BETTER:
        return "lower"
    known = ", ".join(sorted(HIGHER_IS_BETTER | LOWER_IS_BETTER))
    raise TrainingError(f"metric {metric!r} has no known direction; use one of: {known}")


def default_primary(metrics: dict[str, float], champion: dict[str, float]) -> str:
    """roc_auc when both models have it, else accuracy; rmse for regression."""
    if "rmse" in metrics or "r2" in metrics:
        return "rmse"
    return "roc_auc" if "roc_auc" in metrics and "roc_auc" in champion else "accuracy"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _threshold_checks(
    metrics: dict[str, float], thresholds: dict[str, dict[str, float]]
) -> tuple[list[dict[str, Any]], list[str]]:
    checks: list[dict[str, Any]] = []
    reasons: list[str] = []
    for kind, bounds in thresholds.items():
        if kind not in ("min", "max"):
            raise TrainingError(f"unknown threshold kind {kind!r}; use 'min' or 'max'")
        for metric, threshold in bounds.items():
            value = _finite(metrics.get(metric))
            if value is None:
                passed = False
                reasons.append(f"{metric} was not computed, so its {kind} threshold fails")
            elif kind == "min":
                passed = value >= threshold
                if not passed:
                    reasons.append(f"{metric} {value:.4g} is below the minimum {threshold:g}")
            else:
                passed = value <= threshold
                if not passed:
                    reasons.append(f"{metric} {value:.4g} is above the maximum {threshold:g}")
            checks.append(
                {"metric": metric, "kind": kind, "threshold": threshold, "value": value,
                 "passed": passed}
            )  # fmt: skip
    return checks, reasons


def _champion_check(
    metrics: dict[str, float], champion: dict[str, float], primary: str, tolerance: float
) -> tuple[dict[str, Any], str | None]:
    better = direction(primary)
    value, reference = _finite(metrics.get(primary)), _finite(champion.get(primary))
    check: dict[str, Any] = {
        "metric": primary, "kind": "champion", "champion": reference, "value": value,
        "tolerance": tolerance, "passed": False,
    }  # fmt: skip
    if value is None:
        return check, f"{primary} was not computed for this model, so it cannot beat the champion"
    if reference is None:
        return check, f"{primary} was not computed for the champion, so they cannot be compared"
    margin = value - reference if better == "higher" else reference - value
    check["passed"] = margin >= tolerance
    if check["passed"]:
        return check, None
    word = "higher" if better == "higher" else "lower"
    return check, (
        f"{primary} {value:.4g} does not beat the champion's {reference:.4g} by at least "
        f"{tolerance:g} ({word} is better)"
    )


def gate(
    metrics: dict[str, float],
    *,
    thresholds: dict[str, dict[str, float]],
    champion: dict[str, float] | None,
    primary_metric: str | None,
    tolerance: float,
) -> dict[str, Any]:
    """Bless only when every threshold holds and the model beats the champion (if any).

    Missing metrics fail their checks: a gate must never pass because nothing was measured.
    """
    if not math.isfinite(tolerance):
        raise TrainingError(f"tolerance must be a finite number, got {tolerance}")
    checks, reasons = _threshold_checks(metrics, thresholds)
    if champion is not None:
        primary = primary_metric or default_primary(metrics, champion)
        check, reason = _champion_check(metrics, champion, primary, tolerance)
        checks.append(check)
        if reason:
            reasons.append(reason)
    verdict = "blessed" if all(c["passed"] for c in checks) else "rejected"
    return {"verdict": verdict, "reasons": reasons, "checks": checks}
