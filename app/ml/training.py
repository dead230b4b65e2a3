"""Fit a model for a pipeline's train stage: split the data, build an allowlisted estimator, fit.

Pure functions over pandas frames; no database, settings or files. Whatever the user can fix
(a missing target, a refused estimator, a misspelt hyperparameter, data an estimator cannot
take) raises `TrainingError` with a message meant to be shown as is.
"""

from __future__ import annotations

import copy
import importlib
import math
from collections.abc import Callable, Collection
from typing import Any, Literal

import numpy as np
import pandas as pd
from pandas.api.types import (
    is_bool_dtype,
    is_integer_dtype,
    is_numeric_dtype,
    is_object_dtype,
    is_string_dtype,
)
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import NotFittedError
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted

Preprocessing = Literal["auto", "none"]

# An integer target with at most this many distinct values is taken as class labels.
MAX_INTEGER_CLASSES = 20


class TrainingError(ValueError):
    """Training cannot go ahead; the message says what the user must fix."""


def require_target(frame: pd.DataFrame, target: str) -> None:
    if target not in frame.columns:
        names = ", ".join(repr(str(c)) for c in list(frame.columns)[:20])
        raise TrainingError(f"target column {target!r} is not in the dataset; columns: {names}")


def without_columns(frame: pd.DataFrame, excluded: Collection[str], *, target: str) -> pd.DataFrame:
    """The table without the columns a train task leaves out (a timestamp, an id): the model
    neither learns from them nor asks for them at predict time."""
    if not excluded:
        return frame
    if target in excluded:
        raise TrainingError(f"exclude_columns names the target {target!r}; it is what is learned")
    unknown = [c for c in excluded if c not in frame.columns]
    if unknown:
        names = ", ".join(repr(str(c)) for c in list(frame.columns)[:20])
        raise TrainingError(
            f"exclude_columns: {', '.join(map(repr, unknown))} not in the dataset; columns: {names}"
        )
    return frame.drop(columns=list(excluded))


def split(
    frame: pd.DataFrame, *, target: str, test_size: float, seed: int, stratify: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic train/test split, so the evaluate stage can rebuild the same holdout.

    Rows without a target value are dropped (they can neither teach nor grade a model).
    Stratification is only applied when it is possible: every class has at least two rows and
    both sides are large enough to hold one row per class.
    """
    require_target(frame, target)
    if not 0 < test_size < 1:
        raise TrainingError(f"test_size must be between 0 and 1 (exclusive), got {test_size}")
    labelled = frame[frame[target].notna()]
    rows = len(labelled)
    n_test = math.ceil(test_size * rows)
    if rows < 2 or n_test >= rows:
        raise TrainingError(
            f"only {rows} row(s) have a value in {target!r}; need enough rows for both a "
            f"training and a test part (test_size={test_size})"
        )
    strata = None
    if stratify:
        counts = labelled[target].value_counts()
        if int(counts.min()) >= 2 and min(n_test, rows - n_test) >= len(counts):
            strata = labelled[target]
    train, test = train_test_split(
        labelled, test_size=test_size, random_state=seed, shuffle=True, stratify=strata
    )
    return train, test


def is_classifier_target(series: pd.Series[Any]) -> bool:
    """Labels (text, booleans, categories, or integers with few distinct values) vs. a quantity.

    Decided from the data alone, so train and evaluate reach the same split without the model.
    """
    values = series.dropna()
    dtype = values.dtype
    if is_bool_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
        return True
    if is_string_dtype(dtype) or is_object_dtype(dtype):
        return True
    if is_integer_dtype(dtype):
        return int(values.nunique()) <= MAX_INTEGER_CLASSES
    return False


def target_array(series: pd.Series[Any]) -> np.ndarray[Any, Any]:
    """Plain numpy labels: nullable Int64/boolean become int64/bool so classes_ stay simple."""
    values = series.dropna()
    numpy_dtype = getattr(values.dtype, "numpy_dtype", None)
    if isinstance(values.dtype, pd.api.extensions.ExtensionDtype) and (
        is_integer_dtype(values.dtype) or is_bool_dtype(values.dtype)
    ):
        return values.to_numpy(dtype=numpy_dtype)
    return values.to_numpy()


def build_estimator(dotted: str, hyperparameters: dict[str, Any], allowed: Collection[str]) -> Any:
    """Import and configure an estimator, but only one the operator allowlisted.

    Importing an arbitrary dotted name would let a request run any module's import-time code.
    """
    if dotted not in set(allowed):
        choices = ", ".join(sorted(allowed)) or "none are configured"
        raise TrainingError(f"estimator {dotted!r} is not allowed; allowed estimators: {choices}")
    module_name, _, class_name = dotted.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise TrainingError(f"cannot import estimator {dotted!r}: {exc}") from exc
    if not isinstance(cls, type) or not hasattr(cls, "get_params") or not hasattr(cls, "fit"):
        raise TrainingError(f"{dotted!r} is not a scikit-learn estimator class")
    try:
        estimator = cls()
    except TypeError as exc:
        raise TrainingError(f"{class_name} cannot be built without arguments: {exc}") from exc
    valid = estimator.get_params(deep=True)
    for name in hyperparameters:
        if name not in valid:
            names = ", ".join(sorted(k for k in valid if "__" not in k))
            raise TrainingError(
                f"unknown hyperparameter {name!r} for {class_name}; valid names: {names}"
            )
    try:
        estimator.set_params(**hyperparameters)
        validate = getattr(estimator, "_validate_params", None)  # sklearn's own constraints
        if callable(validate):
            validate()
    except (ValueError, TypeError) as exc:
        raise TrainingError(f"bad hyperparameter for {class_name}: {exc}") from exc
    return estimator


def _accepts_sparse(estimator: Any) -> bool:
    try:
        from sklearn.utils import get_tags  # scikit-learn >= 1.6
    except ImportError:
        return False
    try:
        return bool(get_tags(estimator).input_tags.sparse)
    except (AttributeError, TypeError, ValueError):
        return False


def _categorical() -> Pipeline:
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("encode", OneHotEncoder(handle_unknown="ignore")),
        ]
    )


def build_pipeline(
    estimator: Any,
    frame_without_target: pd.DataFrame,
    preprocessing: Preprocessing,
    notes: list[str] | None = None,
) -> Any:
    """Wrap the estimator in preprocessing chosen from column types, so raw tables just work.

    Only scikit-learn classes go in, so the saved file passes the registry's type allowlist.
    Booleans get their own branch: a nullable boolean column with missing values next to text
    would become an object array holding pd.NA, which the imputer cannot compare.
    """
    if preprocessing == "none":
        return estimator
    if preprocessing != "auto":
        raise TrainingError(f"unknown preprocessing {preprocessing!r}; use 'auto' or 'none'")
    numeric, boolean, categorical, dropped = [], [], [], []
    for name, column in frame_without_target.items():
        dtype = column.dtype
        if is_bool_dtype(dtype):
            boolean.append(name)
        elif is_numeric_dtype(dtype):
            numeric.append(name)
        elif (
            isinstance(dtype, pd.CategoricalDtype)
            or is_string_dtype(dtype)
            or is_object_dtype(dtype)
        ):
            categorical.append(name)
        else:  # datetimes, durations, periods: no generic encoding
            dropped.append(name)
    if dropped and notes is not None:
        listed = ", ".join(repr(str(n)) for n in dropped)
        notes.append(f"dropped datetime/other columns the auto preprocessing cannot use: {listed}")
    if not numeric and not boolean and not categorical:
        raise TrainingError("no usable feature columns: the table has only the target column")
    scale = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    branches = [
        (label, transformer, columns)
        for label, transformer, columns in (
            ("numeric", scale, numeric),
            ("boolean", _categorical(), boolean),
            ("categorical", _categorical(), categorical),
        )
        if columns
    ]
    prep = ColumnTransformer(
        branches, remainder="drop", sparse_threshold=0.3 if _accepts_sparse(estimator) else 0.0
    )
    return Pipeline([("preprocess", prep), ("model", estimator)])


def fit_builtin(
    train: pd.DataFrame,
    *,
    target: str,
    estimator: str,
    hyperparameters: dict[str, Any],
    preprocessing: Preprocessing,
    allowed: Collection[str],
    notes: list[str] | None = None,
) -> Any:
    """Fit an allowlisted estimator (with preprocessing) on the training rows."""
    require_target(train, target)
    model = build_estimator(estimator, hyperparameters, allowed)
    rows = train[train[target].notna()]
    features = rows.drop(columns=[target])
    if features.shape[1] == 0:
        raise TrainingError("no feature columns: the table has only the target column")
    pipeline = build_pipeline(model, features, preprocessing, notes)
    try:
        pipeline.fit(features, target_array(rows[target]))
    except (ValueError, TypeError) as exc:
        hint = " (preprocessing is 'none'; try 'auto')" if preprocessing == "none" else ""
        name = estimator.rpartition(".")[2]
        raise TrainingError(f"{name} could not be fitted on this data{hint}: {exc}") from exc
    return pipeline


def fit_entrypoint(
    train: pd.DataFrame,
    function: Callable[[pd.DataFrame, dict[str, Any]], Any],
    params: dict[str, Any],
) -> Any:
    """Run the user's training function and check it handed back a fitted model."""
    model = function(train.copy(), dict(params))
    missing = [m for m in ("fit", "predict") if not callable(getattr(model, m, None))]
    if missing:
        raise TrainingError(
            f"the entrypoint returned {type(model).__name__}, which has no "
            f"{' or '.join(m + '()' for m in missing)}; return the fitted estimator"
        )
    try:
        check_is_fitted(model)
    except NotFittedError as exc:
        raise TrainingError(
            f"the entrypoint returned an unfitted {type(model).__name__}; call fit() on it "
            "before returning it"
        ) from exc
    except TypeError:
        pass  # not a scikit-learn estimator; fit/predict is all we can check
    return model


def supports(estimator: Any) -> dict[str, bool]:
    """Whether the (final) estimator can continue training: warm_start or partial_fit."""
    final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    get_params = getattr(final, "get_params", None)
    params = get_params(deep=False) if callable(get_params) else {}
    return {
        "warm_start": "warm_start" in params,
        "partial_fit": callable(getattr(final, "partial_fit", None)),
    }


ContinueMethod = Literal["warm_start", "partial_fit"]


def _final(model: Any) -> Any:
    return model.steps[-1][1] if isinstance(model, Pipeline) else model


def _growth_param(final: Any) -> str | None:
    """The size parameter that warm start grows: trees/stages, or boosting iterations.

    `max_iter` only counts fitted members in the ensembles (HistGradientBoosting); in linear
    models it bounds solver iterations, so raising it would add nothing.
    """
    get_params = getattr(final, "get_params", None)
    params = get_params(deep=False) if callable(get_params) else {}
    if "warm_start" not in params:
        return None
    if "n_estimators" in params:
        return "n_estimators"
    if "max_iter" in params and type(final).__module__.startswith("sklearn.ensemble."):
        return "max_iter"
    return None


def _fitted_size(final: Any, growth: str) -> int:
    """Members actually fitted (early stopping can leave fewer than the parameter asks)."""
    if growth == "max_iter":
        return int(final.n_iter_)
    fitted = getattr(final, "n_estimators_", None)  # gradient boosting after early stopping
    return int(fitted) if fitted is not None else len(final.estimators_)


def capabilities(allowed: Collection[str]) -> dict[str, list[str]]:
    """Which allowlisted estimators can continue training, by method, for error messages.

    Keys: warm_start, add_estimators (warm start that grows trees/iterations), partial_fit.
    Names that cannot be imported are left out: they cannot be trained either.
    """
    found: dict[str, list[str]] = {"warm_start": [], "add_estimators": [], "partial_fit": []}
    for dotted in sorted(allowed):
        try:
            estimator = build_estimator(dotted, {}, allowed)
        except TrainingError:
            continue
        flags = supports(estimator)
        if flags["warm_start"]:
            found["warm_start"].append(dotted)
            if _growth_param(estimator) is not None:
                found["add_estimators"].append(dotted)
        if flags["partial_fit"]:
            found["partial_fit"].append(dotted)
    return found


def _needs(key: str, allowed: Collection[str]) -> str:
    names = capabilities(allowed)[key] if allowed else []
    return f"; {key} needs one of: {', '.join(names)}" if names else ""


def _listed(values: Collection[Any], limit: int = 10) -> str:
    names = sorted(map(str, values))
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_labels(final: Any, labels: np.ndarray[Any, Any], method: ContinueMethod) -> None:
    """Refuse labels that would silently re-map the classes the fitted model is built on.

    partial_fit cannot learn a new class; warm start re-derives classes_ from the new rows, so
    a missing class would shift the encoding under the existing trees or coefficients.
    """
    classes = getattr(final, "classes_", None)
    if classes is None:
        return
    known = set(np.asarray(classes).tolist())
    seen = set(np.unique(labels).tolist())
    if seen - known:
        raise TrainingError(
            f"the new rows have class labels the model has never seen: {_listed(seen - known)}; "
            f"{method} cannot add classes (known: {_listed(known)}); train a new model instead"
        )
    if method == "warm_start" and known - seen:
        raise TrainingError(
            f"warm start needs rows of every class the model knows; missing: "
            f"{_listed(known - seen)} (use partial_fit, or train a new model)"
        )


def _features(model: Any, rows: pd.DataFrame) -> Any:
    """The final estimator's input: new rows through the fitted preprocessing, left as is."""
    if isinstance(model, Pipeline):
        return model[:-1].transform(rows) if len(model.steps) > 1 else rows
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        return rows
    missing = [str(n) for n in names if n not in rows.columns]
    if missing:
        raise TrainingError(f"the new rows lack columns the model was fitted on: {missing}")
    return rows[list(names)]


def _rows(features: Any, part: slice) -> Any:
    return features.iloc[part] if isinstance(features, pd.DataFrame) else features[part]


def continue_training(
    model: Any,
    rows: pd.DataFrame,
    *,
    target: str,
    method: ContinueMethod,
    add_estimators: int | None = None,
    batch_size: int = 256,
    allowed: Collection[str] = (),
) -> tuple[Any, dict[str, Any]]:
    """Continue fitting a copy of `model` on new rows: warm start or partial_fit mini-batches.

    Fitted preprocessing is reused, not refitted, so the existing trees or coefficients keep
    seeing features encoded the way they were trained on. `allowed` only widens error messages
    with the allowlisted estimators that support the method. Returns (new model, JSON info).
    """
    if method not in ("warm_start", "partial_fit"):
        raise TrainingError(f"unknown continue method {method!r}; use warm_start or partial_fit")
    require_target(rows, target)
    labelled = rows[rows[target].notna()]
    if labelled.empty:
        raise TrainingError(f"no rows with a value in {target!r} to continue training on")
    result = copy.deepcopy(model)
    final = _final(result)
    name = type(final).__name__
    flags = supports(result)
    growth = _growth_param(final)
    if not flags[method]:
        other = [m for m, ok in flags.items() if ok]
        can = f"; it supports {' and '.join(other)}" if other else ""
        raise TrainingError(
            f"{name} cannot continue training with {method}{can}" + _needs(method, allowed)
        )
    if add_estimators is not None and (method != "warm_start" or growth is None):
        raise TrainingError(
            f"add_estimators only applies to warm start of tree ensembles; {name} with {method} "
            "does not grow" + _needs("add_estimators", allowed)
        )
    if add_estimators is not None and add_estimators < 1:
        raise TrainingError(f"add_estimators must be at least 1, got {add_estimators}")
    if method == "warm_start" and growth is not None and add_estimators is None:
        raise TrainingError(
            f"warm start of {name} needs add_estimators (how many trees or iterations to add); "
            "without it nothing new would be fitted"
        )
    if batch_size < 1:
        raise TrainingError(f"batch_size must be at least 1, got {batch_size}")
    labels = target_array(labelled[target])
    _check_labels(final, labels, method)
    info: dict[str, Any] = {
        "method": method,
        "estimator": f"{type(final).__module__}.{type(final).__qualname__}",
        "estimators_before": _fitted_size(final, growth) if growth else None,
        "estimators_after": None,
        "add_estimators": add_estimators,
        "batches": None,
        "batch_size": batch_size if method == "partial_fit" else None,
        "rows": len(labelled),
    }
    try:
        features = _features(result, labelled.drop(columns=[target]))
        expected = getattr(final, "n_features_in_", None)
        if expected is not None and features.shape[1] != expected:
            raise TrainingError(
                f"{name} was fitted on {expected} features, the new rows give "
                f"{features.shape[1]}; continue only on data with the same columns"
            )
        if method == "warm_start":
            was_warm = final.get_params(deep=False)["warm_start"]
            final.set_params(warm_start=True)
            if growth and add_estimators:
                final.set_params(**{growth: info["estimators_before"] + add_estimators})
            final.fit(features, labels)
            final.set_params(warm_start=was_warm)  # fitted state kept; only the flag restored
        else:
            extra = {"classes": final.classes_} if hasattr(final, "classes_") else {}
            starts = range(0, len(labelled), batch_size)
            for start in starts:
                part = slice(start, start + batch_size)
                final.partial_fit(_rows(features, part), labels[part], **extra)
            info["batches"] = len(starts)
    except TrainingError:
        raise
    except (ValueError, TypeError) as exc:
        raise TrainingError(f"{name} could not continue training on this data: {exc}") from exc
    if growth:
        info["estimators_after"] = _fitted_size(final, growth)
    return result, info
