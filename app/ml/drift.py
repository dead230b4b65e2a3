"""Drift of a production window against a dataset version's stored reference profile.

The reference side is always the JSON that `app.ml.profile.profile_frame` stored when the
training data was uploaded (quantiles, histogram, category counts), never the raw training
rows: a drift job reads one small document instead of rescanning the data set.

Numeric features are compared with a reference CDF rebuilt from the profile: the
piecewise-linear curve through the 101 quantiles and through the cumulative histogram counts
at every bin edge (the edges pin the tails, which the 0th-1st and 99th-100th percentiles alone
would stretch linearly out to the extremes), with point masses where quantiles tie; integer
columns get a step at every integer instead. KS and Wasserstein are computed exactly against
that curve over the sorted window, O(n log n). KS is thus a one-sample statistic against the
rebuilt CDF, with the p-value of the two-sample test (scipy's asymptotic ks_2samp p-value at
the effective size n*m/(n+m)), since the reference is itself a sample of m rows.
PSI, Jensen-Shannon and chi-squared use the reference histogram bins plus two open-ended bins
for values below the reference minimum and above its maximum; categorical features use the
stored categories plus one "(other)" bin for the reference's long tail and unseen values.

Method choice follows Evidently's defaults (numeric: KS up to 1,000 values, normalized
Wasserstein above; categorical: chi-squared up to 1,000, Jensen-Shannon above; thresholds
0.05 on p-values, 0.1 on distances; PSI 0.2 on request), except that the size is the current
window's (Evidently looks at the reference's): p-values turn hypersensitive as the window
grows. Everything is overridable per call. A window whose values are all null drifted (the
model sees only imputed values); an empty window is an error. Results are plain JSON through
`to_dict()`; NaN and inf never appear.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from pandas.api.types import infer_dtype, is_bool_dtype, is_numeric_dtype
from scipy import stats  # type: ignore[import-untyped, unused-ignore]

from app.ml import reference_cdf as cdf
from app.ml.profile import profile_frame
from app.ml.reference_cdf import FloatArray, IntArray, Values

Method = Literal["ks", "chisquare", "psi", "jensenshannon", "wasserstein"]
Kind = Literal["numeric", "categorical"]
METHODS: tuple[Method, ...] = get_args(Method)
# p-value methods flag drift when p < threshold; distances when statistic >= threshold.
P_VALUE_METHODS: frozenset[Method] = frozenset({"ks", "chisquare"})
NUMERIC_METHODS: frozenset[Method] = frozenset(METHODS)
CATEGORICAL_METHODS: frozenset[Method] = frozenset({"chisquare", "psi", "jensenshannon"})
DEFAULT_THRESHOLDS: Mapping[Method, float] = MappingProxyType(
    {"ks": 0.05, "chisquare": 0.05, "wasserstein": 0.1, "jensenshannon": 0.1, "psi": 0.2}
)
SMALL_SAMPLE = 1000  # current windows up to this size get a test, larger ones a distance
PSI_EPSILON = 1e-4  # stands in for an empty bin's proportion so the log stays finite
STD_FLOOR = 1e-3  # Wasserstein's normalizer for a constant reference (Evidently's floor)
OTHER = "(other)"  # the categorical bin for the reference's tail and unseen current values


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's verdict, with the binned counts a dashboard plots beside it.

    Numeric `bins` are the reference histogram edges; the count lists then have
    len(bins) + 1 entries: values below bins[0], one per bin (last bin closed), values above
    bins[-1]. Categorical `bins` are category labels, the counts one per label.
    """

    feature: str
    type: str
    kind: Kind
    method: Method
    statistic: float | None
    p_value: float | None
    threshold: float
    drifted: bool
    current_n: int
    reference_n: int
    current_nulls: int
    reference_nulls: int
    bins: list[float] | list[str]
    reference_counts: list[int]
    current_counts: list[int]
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "type": self.type,
            "kind": self.kind,
            "method": self.method,
            "statistic": _finite(self.statistic),
            "p_value": _finite(self.p_value),
            "threshold": self.threshold,
            "drifted": self.drifted,
            "current_n": self.current_n,
            "reference_n": self.reference_n,
            "current_nulls": self.current_nulls,
            "reference_nulls": self.reference_nulls,
            "bins": list(self.bins),
            "reference_counts": list(self.reference_counts),
            "current_counts": list(self.current_counts),
            "note": self.note,
        }


@dataclass(frozen=True)
class DatasetDrift:
    """Per-feature verdicts and the share rule: the data set drifted when at least `share`
    of the compared features did (Evidently's DataDriftPreset rule)."""

    features: dict[str, FeatureDrift]
    share: float
    drifted_share: float
    dataset_drifted: bool
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, result in self.features.items() if result.drifted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "share": self.share,
            "drifted_share": self.drifted_share,
            "dataset_drifted": self.dataset_drifted,
            "n_features": len(self.features),
            "n_drifted": len(self.drifted_features),
            "drifted_features": self.drifted_features,
            "features": {name: result.to_dict() for name, result in self.features.items()},
            "skipped": dict(self.skipped),
        }


def default_method(kind: Kind, current_n: int) -> Method:
    """Evidently's automatic choice: a test while p-values still mean something, a distance
    once any negligible difference would be 'significant'."""
    if kind == "numeric":
        return "ks" if current_n <= SMALL_SAMPLE else "wasserstein"
    return "chisquare" if current_n <= SMALL_SAMPLE else "jensenshannon"


def feature_drift(
    reference_column_profile: Mapping[str, Any],
    current_values: Values,
    method: Method | None = None,
    thresholds: Mapping[str, float] | None = None,
    *,
    threshold: float | None = None,
    feature: str = "",
) -> FeatureDrift:
    """Compare one feature's production window with its reference column profile.

    `method` forces a method (default: by kind and current sample size); `thresholds` maps
    method names to thresholds over DEFAULT_THRESHOLDS; `threshold` overrides both.
    """
    profile = reference_column_profile
    kind = profile.get("kind")
    if kind not in ("numeric", "categorical"):
        raise ValueError(f"feature {feature!r}: no drift comparison for a {kind!r} column profile")
    if len(current_values) == 0:
        raise ValueError(f"feature {feature!r}: the current window is empty; nothing to compare")
    if kind == "numeric":
        return _numeric_drift(profile, current_values, method, thresholds, threshold, feature)
    return _categorical_drift(profile, current_values, method, thresholds, threshold, feature)


def dataset_drift(
    reference_profile: Mapping[str, Any],
    current_columns: Mapping[str, Values],
    share: float = 0.5,
    *,
    numeric_method: Method | None = None,
    categorical_method: Method | None = None,
    methods: Mapping[str, Method] | None = None,
    thresholds: Mapping[str, float] | None = None,
    feature_thresholds: Mapping[str, float] | None = None,
) -> DatasetDrift:
    """Every current column the reference profile knows, in the profile's column order.

    Methods: `methods[feature]`, else `numeric_method`/`categorical_method`, else automatic.
    Thresholds: `feature_thresholds[feature]`, else `thresholds[method]`, else the default.
    Columns only one side has, and datetime columns, are listed in `skipped` with why.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    columns = reference_profile.get("columns")
    if not isinstance(columns, Mapping):
        raise ValueError("reference profile has no 'columns' mapping")
    if current_columns and all(len(values) == 0 for values in current_columns.values()):
        raise ValueError("the current window is empty: every column has zero rows")
    methods, feature_thresholds = methods or {}, feature_thresholds or {}
    results: dict[str, FeatureDrift] = {}
    skipped: dict[str, str] = {}
    for name, column in columns.items():
        if name not in current_columns:
            skipped[name] = "not in the current window"
            continue
        kind = column.get("kind")
        if kind not in ("numeric", "categorical"):
            skipped[name] = f"{kind} columns are not compared"
            continue
        chosen = methods.get(name) or (numeric_method if kind == "numeric" else categorical_method)
        results[name] = feature_drift(
            column,
            current_columns[name],
            chosen,
            thresholds,
            threshold=feature_thresholds.get(name),
            feature=name,
        )
    for name in current_columns:
        if name not in columns:
            skipped[name] = "not in the reference profile"
    if not results:
        raise ValueError("no current column matches a comparable column of the reference profile")
    drifted_share = sum(result.drifted for result in results.values()) / len(results)
    return DatasetDrift(results, share, drifted_share, drifted_share >= share, skipped)


def prediction_drift(
    reference: Mapping[str, Any],
    current_predictions: Values,
    method: Method | None = None,
    thresholds: Mapping[str, float] | None = None,
    *,
    threshold: float | None = None,
    column: str | None = None,
) -> FeatureDrift:
    """Drift of the model's outputs against the profile of its outputs on reference data.

    `reference` is a column profile (see `profile_values`) or a whole profile, from which
    `column` (or its only column) is taken.
    """
    if "columns" in reference:
        columns = reference["columns"]
        if column is None:
            if len(columns) != 1:
                raise ValueError(f"name the prediction column, one of {sorted(columns)}")
            column = next(iter(columns))
        reference = columns[column]
    return feature_drift(
        reference,
        current_predictions,
        method,
        thresholds,
        threshold=threshold,
        feature=column or "prediction",
    )


def profile_values(values: Values, *, bins: int = 20, top_categories: int = 100) -> dict[str, Any]:
    """A column profile of one array (e.g. a model's predictions on its reference data),
    built by the same code as a data set's profile so both sides compare alike."""
    profile = profile_frame(
        pd.DataFrame({"values": values}), bins=bins, top_categories=top_categories
    )
    columns = profile["columns"]
    if not isinstance(columns, dict):
        raise TypeError("profile_frame returned no column mapping")
    column: dict[str, Any] = columns["values"]
    return column


# --- numeric (the reference CDF and its statistics: app.ml.reference_cdf) --------------------
def _numeric_drift(
    profile: Mapping[str, Any],
    values: Values,
    method: Method | None,
    thresholds: Mapping[str, float] | None,
    threshold: float | None,
    feature: str,
) -> FeatureDrift:
    ref = cdf.numeric_reference(profile)
    ordered, nulls = cdf.numeric_values(values)
    n = int(ordered.size)
    chosen = _check_method(method or default_method("numeric", n), NUMERIC_METHODS, feature)
    limit = _threshold(chosen, thresholds, threshold)
    result: dict[str, Any] = {
        "feature": feature,
        "type": str(profile.get("type", "float")),
        "kind": "numeric",
        "method": chosen,
        "threshold": limit,
        "current_n": n,
        "reference_n": ref.n,
        "current_nulls": nulls,
        "reference_nulls": ref.nulls,
        "statistic": None,
        "p_value": None,
        "bins": [],
        "reference_counts": [],
        "current_counts": [],
    }
    if ref.n == 0:
        note = "the reference has no non-null values"
        return FeatureDrift(**result, drifted=n > 0, note=note)
    reference_counts, current_counts = cdf.numeric_bins(ordered, ref)
    result["bins"] = ref.edges.tolist()
    result["reference_counts"] = reference_counts.tolist()
    result["current_counts"] = current_counts.tolist()
    if n == 0:
        return FeatureDrift(
            **result, drifted=True, note="the current window has no non-null values"
        )
    p_value: float | None = None
    if chosen == "ks":
        statistic, p_value = cdf.ks(ordered, ref)
    elif chosen == "wasserstein":
        scale = ref.std if ref.std is not None and math.isfinite(ref.std) else 0.0
        statistic = cdf.wasserstein(ordered, ref) / max(scale, STD_FLOOR)
    else:
        statistic, p_value = _binned(chosen, reference_counts, current_counts)
    result |= {"statistic": statistic, "p_value": p_value}
    drifted = _verdict(chosen, statistic, p_value, limit)
    return FeatureDrift(**result, drifted=drifted, note=cdf.range_note(ordered, ref))


# --- categorical ----------------------------------------------------------------------------


def _category_counts(values: Values, column_type: str) -> tuple[pd.Series[int], int]:
    """Value counts keyed the way profile.py keys categories, and the null count."""
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    present: pd.Series[Any] = series.dropna()
    nulls = int(series.size - present.size)
    if column_type == "boolean":
        if is_bool_dtype(present.dtype) or infer_dtype(present, skipna=True) == "boolean":
            keys = present.astype(bool).map({True: "true", False: "false"})
        elif is_numeric_dtype(present.dtype):
            keys = (present != 0).map({True: "true", False: "false"})
        else:
            keys = present.astype("str").str.lower()
    elif isinstance(present.dtype, pd.StringDtype):
        keys = present
    else:
        keys = present.astype("str")
    return keys.value_counts(sort=False), nulls


def _categorical_drift(
    profile: Mapping[str, Any],
    values: Values,
    method: Method | None,
    thresholds: Mapping[str, float] | None,
    threshold: float | None,
    feature: str,
) -> FeatureDrift:
    column_type = str(profile.get("type", "string"))
    labels = [str(label) for label in profile.get("counts", {})]
    reference = np.array([*profile.get("counts", {}).values(), profile.get("other") or 0], np.int64)
    reference_n, reference_nulls = int(profile["count"]), int(profile.get("nulls") or 0)
    frequencies, nulls = _category_counts(values, column_type)
    n = int(frequencies.sum())
    listed = frequencies.reindex(labels, fill_value=0).to_numpy(dtype=np.int64)
    current = np.append(listed, n - int(listed.sum()))
    chosen = _check_method(method or default_method("categorical", n), CATEGORICAL_METHODS, feature)
    limit = _threshold(chosen, thresholds, threshold)
    common: dict[str, Any] = {"feature": feature, "type": column_type, "kind": "categorical"}
    common |= {"method": chosen, "threshold": limit, "current_n": n, "reference_n": reference_n}
    common |= {"current_nulls": nulls, "reference_nulls": reference_nulls}
    common |= {
        "bins": [*labels, OTHER],
        "reference_counts": reference.tolist(),
        "current_counts": current.tolist(),
    }
    if reference_n == 0 or n == 0:
        side = "reference" if reference_n == 0 else "current window"
        drifted = (reference_n > 0) != (n > 0)
        missing = f"the {side} has no non-null values"
        return FeatureDrift(**common, statistic=None, p_value=None, drifted=drifted, note=missing)
    statistic, p_value = _binned(chosen, reference, current)
    note: str | None = None
    unseen = int(current[-1]) if reference[-1] == 0 else 0
    if unseen:
        note = f"{unseen} of {n} current values are categories the reference never saw"
    drifted = _verdict(chosen, statistic, p_value, limit)
    return FeatureDrift(**common, statistic=statistic, p_value=p_value, drifted=drifted, note=note)


# --- shared ---------------------------------------------------------------------------------


def _binned(method: Method, reference: IntArray, current: IntArray) -> tuple[float, float | None]:
    """PSI, Jensen-Shannon or chi-squared on counts over the same bins."""
    used = (reference > 0) | (current > 0)
    ref, cur = reference[used].astype(np.float64), current[used].astype(np.float64)
    if method == "chisquare":
        # Homogeneity of the two samples' counts (a 2 x k table): the reference's own sampling
        # noise counts too, so a window as large as the reference is not over-flagged. For a
        # reference much larger than the window it is Evidently's goodness of fit to the
        # reference proportions; a category only one side has keeps the statistic finite.
        total = ref + cur
        both = np.array([ref.sum(), cur.sum()])
        expected = np.outer(both, total) / total.sum()
        statistic = float(np.sum((np.vstack([ref, cur]) - expected) ** 2 / expected))
        dof = ref.size - 1
        return statistic, float(stats.chi2.sf(statistic, dof)) if dof > 0 else 1.0
    p, q = ref / ref.sum(), cur / cur.sum()
    if method == "psi":
        p, q = np.where(p == 0, PSI_EPSILON, p), np.where(q == 0, PSI_EPSILON, q)
        return float(np.sum((q - p) * np.log(q / p))), None
    if method == "jensenshannon":  # natural log, like scipy's and Evidently's default
        mix = (p + q) / 2
        divergence = (_kl(p, mix) + _kl(q, mix)) / 2
        return math.sqrt(max(divergence, 0.0)), None
    raise ValueError(f"{method} does not work on binned counts")


def _kl(p: FloatArray, q: FloatArray) -> float:
    mass = p > 0
    return float(np.sum(p[mass] * np.log(p[mass] / q[mass])))


def _verdict(method: Method, statistic: float, p_value: float | None, threshold: float) -> bool:
    if method in P_VALUE_METHODS:
        return p_value is not None and p_value < threshold
    return bool(statistic >= threshold)


def _check_method(method: str, allowed: frozenset[Method], feature: str) -> Method:
    if method not in METHODS:
        raise ValueError(f"unknown drift method {method!r}; choose from {', '.join(METHODS)}")
    if method not in allowed:
        raise ValueError(
            f"feature {feature!r}: {method} does not apply to this kind of column; "
            f"choose from {', '.join(sorted(allowed))}"
        )
    return method


def _threshold(
    method: Method, thresholds: Mapping[str, float] | None, override: float | None
) -> float:
    value = override
    if value is None and thresholds is not None:
        value = thresholds.get(method)
    if value is None:
        value = DEFAULT_THRESHOLDS[method]
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"threshold for {method} must be a finite number >= 0, got {value}")
    return value


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
