"""Fit a model for a pipeline's train stage: split the data, build an allowlisted estimator, fit.

Pure functions over pandas frames; no database, settings or files. Whatever the user can fix
(a missing target, a refused estimator, a misspelt hyperparameter, data an estimator cannot
take) raises `TrainingError` with a message meant to be shown as is.
"""

from __future__ import annotations

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
