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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeAlias, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.api.extensions import ExtensionArray
from pandas.api.types import infer_dtype, is_bool_dtype, is_numeric_dtype
from scipy import stats  # type: ignore[import-untyped, unused-ignore]

from app.ml.profile import profile_frame

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
INTEGER_SPAN = 10_000  # integer columns up to this range get a step (lattice) reference CDF
STD_FLOOR = 1e-3  # Wasserstein's normalizer for a constant reference (Evidently's floor)
OTHER = "(other)"  # the categorical bin for the reference's tail and unseen current values

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]
Values: TypeAlias = "Sequence[Any] | npt.NDArray[Any] | pd.Series[Any] | ExtensionArray"


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


# --- numeric --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _NumericReference:
    """A numeric column profile, unpacked once: histogram and the CDF knots.

    The CDF is piecewise linear between knots `x`; at a knot it jumps from `lo` = P(X < x)
    to `hi` = P(X <= x) (equal unless the value carries a point mass).
    """

    n: int
    nulls: int
    std: float | None
    edges: FloatArray
    counts: IntArray
    x: FloatArray
    lo: FloatArray
    hi: FloatArray


def _numeric_reference(profile: Mapping[str, Any]) -> _NumericReference:
    n, nulls = int(profile["count"]), int(profile.get("nulls") or 0)
    empty = np.empty(0)
    if n == 0:
        return _NumericReference(0, nulls, None, empty, np.empty(0, np.int64), empty, empty, empty)
    quantiles, histogram = profile["quantiles"], profile["histogram"]
    probs = np.asarray(quantiles["probs"], dtype=np.float64)
    values = np.array([np.nan if v is None else v for v in quantiles["values"]], np.float64)
    edges = np.asarray(histogram["edges"], dtype=np.float64)
    counts = np.asarray(histogram["counts"], dtype=np.int64)
    # P(X < edge) for every edge but the last, whose bin is closed: P(X <= max) = 1.
    below = np.concatenate([[0], np.cumsum(counts)]) / max(int(counts.sum()), 1)
    xs, ps = np.concatenate([values, edges]), np.concatenate([probs, below])
    keep = np.isfinite(xs) & np.isfinite(ps)
    xs, ps = xs[keep], ps[keep]
    if xs.size == 0:
        raise ValueError("the reference profile has no finite quantiles or histogram edges")
    order = np.lexsort((ps, xs))  # by value, then probability
    xs, ps = xs[order], ps[order]
    x, first = np.unique(xs, return_index=True)
    last = np.append(first[1:], xs.size) - 1
    # Quantile interpolation and histogram counts disagree by ~1/n: make the curve monotone.
    steps = np.clip(np.maximum.accumulate(np.column_stack([ps[first], ps[last]]).ravel()), 0, 1)
    lo, hi = steps[0::2].copy(), steps[1::2].copy()
    lo[0], hi[-1] = 0.0, 1.0  # nothing below the minimum, nothing above the maximum
    if profile.get("type") == "integer" and x[-1] - x[0] <= INTEGER_SPAN:
        x, lo, hi = _integer_lattice(x, lo, hi)
    std = profile.get("std")
    scale = None if std is None else float(std)
    return _NumericReference(n, nulls, scale, edges, counts, x, lo, hi)


def _integer_lattice(
    x: FloatArray, lo: FloatArray, hi: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Integer data has its mass on the integers, not spread between knots: a step at every
    integer k up to P(X <= k).

    That is exact where a histogram edge falls inside (k, k + 1). Elsewhere a quantile at k
    sits somewhere inside k's block of the sorted data, so the curve at k + 1/2, halfway to
    the next block, estimates it without the half-step bias of linear interpolation.
    """
    lattice = np.arange(x[0], x[-1] + 1)
    xp, fp = np.repeat(x, 2), np.column_stack([lo, hi]).ravel()
    at_most = np.interp(lattice + 0.5, xp, fp)  # P(X <= k)
    between = np.flatnonzero(x != np.floor(x))  # a histogram edge inside (k, k + 1): exact
    at_most[(np.floor(x[between]) - x[0]).astype(np.intp)] = lo[between]
    at_most = np.maximum.accumulate(at_most)
    at_most[-1] = 1.0
    return lattice, np.concatenate([[0.0], at_most[:-1]]), at_most


def _numeric_values(values: Values) -> tuple[FloatArray, int]:
    """Finite values and the count of the rest (None, NaN, +/-inf, unparseable)."""
    array: FloatArray
    if isinstance(values, pd.Series | pd.Index | ExtensionArray):
        try:
            array = values.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            coerced = pd.to_numeric(pd.Series(values), errors="coerce")
            array = coerced.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            coerced = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce")
            array = coerced.to_numpy(dtype=np.float64, na_value=np.nan)
    if array.ndim != 1:
        raise ValueError(f"expected one-dimensional values, got shape {array.shape}")
    finite = np.isfinite(array)
    if finite.all():
        return np.sort(array), 0
    return np.sort(array[finite]), int(array.size - finite.sum())


def _interpolators(ref: _NumericReference) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """np.interp tables for the reference CDF's right limits P(X <= t) and left limits
    P(X < t): a point mass becomes a jump one float wide, so xp stays strictly increasing."""
    mass = ref.lo < ref.hi
    below, above = np.nextafter(ref.x, -np.inf), np.nextafter(ref.x, np.inf)
    # knots one float apart (vanishingly rare) keep their point mass on one side only
    right_ok = mass & (below > np.append(-np.inf, ref.x[:-1]))
    left_ok = mass & (above < np.append(ref.x[1:], np.inf))
    right_x = np.column_stack([np.where(right_ok, below, np.nan), ref.x]).ravel()
    right_p = np.column_stack([ref.lo, ref.hi]).ravel()
    left_x = np.column_stack([ref.x, np.where(left_ok, above, np.nan)]).ravel()
    left_p = right_p
    keep_right, keep_left = ~np.isnan(right_x), ~np.isnan(left_x)
    return right_x[keep_right], right_p[keep_right], left_x[keep_left], left_p[keep_left]


Gaps: TypeAlias = tuple[FloatArray, FloatArray, FloatArray]


def _gaps(ordered: FloatArray, ref: _NumericReference) -> list[Gaps]:
    """F_ref - F_current at the start and end of every interval on which the current CDF is
    constant and the reference CDF a straight line, with the interval widths.

    Between consecutive current values the current CDF is (i + 1) / n and, unless a reference
    knot falls in between, the reference CDF is linear: one np.interp pass over the sorted
    values gives it for all of them. The few gaps holding a knot, and the stretches of the
    reference beyond the current values, are split at the knots on a small side array.
    """
    n = ordered.size
    right_x, right_p, left_x, left_p = _interpolators(ref)
    cdf = np.interp(ordered, right_x, right_p)
    level = np.linspace(1 / n, (n - 1) / n, n - 1)
    start, end, width = cdf[:-1] - level, cdf[1:] - level, np.diff(ordered)
    # Knot k lies in gap i when s_i < x_k <= s_i+1; those gaps are redone exactly below.
    holder = np.searchsorted(ordered, ref.x, side="left") - 1
    special = np.unique(holder[(holder >= 0) & (holder < n - 1)])
    start[special] = end[special] = 0.0
    pieces_a, pieces_b, pieces_c = [ordered[special]], [ordered[special + 1]], [level[special]]
    if ref.x[0] < ordered[0]:  # reference mass below every current value: F_current = 0
        pieces_a.insert(0, ref.x[:1])
        pieces_b.insert(0, ordered[:1])
        pieces_c.insert(0, np.zeros(1))
    if ref.x[-1] > ordered[-1]:  # reference mass above every current value: F_current = 1
        pieces_a.append(ordered[-1:])
        pieces_b.append(ref.x[-1:])
        pieces_c.append(np.ones(1))
    a, b, c = (np.concatenate(parts) for parts in (pieces_a, pieces_b, pieces_c))
    if a.size == 0:  # every knot sits on a current value or between equal ones
        return [(start, end, width)]
    owner = np.searchsorted(a, ref.x, side="right") - 1
    safe = np.maximum(owner, 0)
    inside = (owner >= 0) & (ref.x > a[safe]) & (ref.x < b[safe])
    points = np.concatenate([a, b, ref.x[inside]])
    ids = np.concatenate([np.arange(a.size), np.arange(a.size), owner[inside]])
    order = np.lexsort((points, ids))
    points, ids = points[order], ids[order]
    same = ids[1:] == ids[:-1]
    u, v, level_uv = points[:-1][same], points[1:][same], c[ids[:-1][same]]
    piece_start = np.interp(u, right_x, right_p) - level_uv
    piece_end = np.interp(v, left_x, left_p) - level_uv
    return [(start, end, width), (piece_start, piece_end, v - u)]


def _ks(ordered: FloatArray, ref: _NumericReference) -> tuple[float, float]:
    """Largest CDF gap, with the p-value ks_2samp's asymptotic mode would give for the two
    sample sizes (Kolmogorov distribution at n*m/(n+m)), the reference being a sample too."""
    statistic = 0.0
    for start, end, width in _gaps(ordered, ref):
        wide = width > 0  # inside a tie, one side's left limit would meet the other's right
        if wide.any():
            ends = np.abs(start[wide]).max(), np.abs(end[wide]).max()
            statistic = max(statistic, *(float(e) for e in ends))
    n, m = ordered.size, ref.n
    effective = max(round(n * m / (n + m)), 1)
    return statistic, float(stats.kstwo.sf(statistic, effective))


def _wasserstein(ordered: FloatArray, ref: _NumericReference) -> float:
    """W1 = integral of |F_current - F_reference|, exact for the piecewise-linear reference:
    on each interval the integrand is |linear|, a trapezoid or, where it changes sign, two
    triangles."""
    total = 0.0
    for start, end, width in _gaps(ordered, ref):
        total += float(np.dot(np.abs(start + end), width)) / 2  # exact where the signs agree
        crossing = np.flatnonzero(start * end < 0)
        if crossing.size:
            p, q, w = np.abs(start[crossing]), np.abs(end[crossing]), width[crossing]
            total += float(np.dot(p * q / (p + q), w))  # two triangles instead of |p - q| / 2
    return total


def _numeric_bins(ordered: FloatArray, ref: _NumericReference) -> tuple[IntArray, IntArray]:
    """Reference and current counts on [below min, reference bins..., above max]."""
    marks = np.searchsorted(ordered, ref.edges, side="left")
    marks[-1] = np.searchsorted(ordered, ref.edges[-1], side="right")  # last bin is closed
    current = np.concatenate([[marks[0]], np.diff(marks), [ordered.size - marks[-1]]])
    reference = np.concatenate([[0], ref.counts, [0]])
    return reference.astype(np.int64), current.astype(np.int64)


def _numeric_drift(
    profile: Mapping[str, Any],
    values: Values,
    method: Method | None,
    thresholds: Mapping[str, float] | None,
    threshold: float | None,
    feature: str,
) -> FeatureDrift:
    ref = _numeric_reference(profile)
    ordered, nulls = _numeric_values(values)
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
    reference_counts, current_counts = _numeric_bins(ordered, ref)
    result["bins"] = ref.edges.tolist()
    result["reference_counts"] = reference_counts.tolist()
    result["current_counts"] = current_counts.tolist()
    if n == 0:
        return FeatureDrift(
            **result, drifted=True, note="the current window has no non-null values"
        )
    p_value: float | None = None
    if chosen == "ks":
        statistic, p_value = _ks(ordered, ref)
    elif chosen == "wasserstein":
        scale = ref.std if ref.std is not None and math.isfinite(ref.std) else 0.0
        statistic = _wasserstein(ordered, ref) / max(scale, STD_FLOOR)
    else:
        statistic, p_value = _binned(chosen, reference_counts, current_counts)
    result |= {"statistic": statistic, "p_value": p_value}
    drifted = _verdict(chosen, statistic, p_value, limit)
    return FeatureDrift(**result, drifted=drifted, note=_range_note(ordered, ref))


def _range_note(ordered: FloatArray, ref: _NumericReference) -> str | None:
    outside = int(np.searchsorted(ordered, ref.x[0], side="left"))
    outside += int(ordered.size - np.searchsorted(ordered, ref.x[-1], side="right"))
    if not outside:
        return None
    return f"{outside} of {ordered.size} current values lie outside the reference range"


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
