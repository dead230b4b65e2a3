"""Schema inference and the reference profile of a dataset version.

The profile is computed once, when a dataset version is created, so drift jobs can compare a
production window against it without rescanning the training data: quantiles feed KS and
Wasserstein, histograms and category counts feed PSI, Jensen-Shannon and chi-squared.
Everything returned is plain JSON (dict/list/float/int/str/None); NaN and inf never appear,
a statistic that does not exist is None.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pandas.api.types import (
    infer_dtype,
    is_bool_dtype,
    is_datetime64_any_dtype,
    is_float_dtype,
    is_integer_dtype,
    is_object_dtype,
)

ColumnType = Literal["integer", "float", "boolean", "string", "datetime"]

QUANTILE_PROBS: tuple[float, ...] = tuple(step / 100 for step in range(101))
_NUMERIC_STATS = ("min", "max", "mean", "std", "quantiles", "histogram")
# What pandas' value inference says about an object column, mapped to our column types.
_INFERRED: dict[str, ColumnType] = {
    "integer": "integer",
    "floating": "float",
    "mixed-integer-float": "float",
    "decimal": "float",
    "boolean": "boolean",
    "datetime64": "datetime",
    "datetime": "datetime",
    "date": "datetime",
}


def infer_schema(frame: pd.DataFrame) -> list[dict[str, object]]:
    """Column names, types and nullability in column order, as stored with a dataset version."""
    schema: list[dict[str, object]] = []
    for position, label in enumerate(frame.columns):
        column_type, series = _classify(frame.iloc[:, position])
        schema.append(
            {"name": str(label), "type": column_type, "nullable": bool(series.isna().any())}
        )
    return schema


def profile_frame(
    frame: pd.DataFrame, *, bins: int = 20, top_categories: int = 100
) -> dict[str, object]:
    """Summarise every column once, vectorised, for later drift comparisons.

    For float columns, +/-inf is counted in "nulls": it has no place in quantiles or histograms.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if top_categories < 0:
        raise ValueError(f"top_categories must not be negative, got {top_categories}")
    columns: dict[str, object] = {}
    for position, label in enumerate(frame.columns):
        name = str(label)
        if name in columns:
            raise ValueError(f"duplicate column name {name!r}; column names must be unique")
        column_type, series = _classify(frame.iloc[:, position])
        if column_type in ("integer", "float"):
            columns[name] = _numeric_profile(series, column_type, bins)
        elif column_type == "boolean":
            columns[name] = _boolean_profile(series)
        elif column_type == "datetime":
            columns[name] = _datetime_profile(series)
        else:
            columns[name] = _string_profile(series, top_categories)
    return {"rows": len(frame), "columns": columns}


def _classify(series: pd.Series) -> tuple[ColumnType, pd.Series]:
    """Type a column by dtype, looking at values only for object columns (pandas 2 or mixed)."""
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return "string", series  # categories are labels, whatever their dtype
    if is_bool_dtype(dtype):
        return "boolean", series
    if is_integer_dtype(dtype):
        return "integer", series
    if is_float_dtype(dtype):
        return "float", series
    if is_datetime64_any_dtype(dtype):
        return "datetime", series
    if not is_object_dtype(dtype):
        return "string", series  # str dtype, timedelta, period, ...: profiled by their text
    inferred = _INFERRED.get(infer_dtype(series, skipna=True), "string")
    if inferred in ("integer", "float"):
        return inferred, pd.to_numeric(series, errors="coerce")
    if inferred == "boolean":
        return inferred, series.astype("boolean")
    if inferred == "datetime":
        try:
            return inferred, pd.to_datetime(series)
        except (ValueError, TypeError, OverflowError):
            return "string", series  # e.g. mixed time zones: keep the text
    return inferred, series


def _finite(value: float | np.floating) -> float | None:
    """JSON has no NaN/inf; a statistic that overflowed or does not exist becomes None."""
    number = float(value)
    return number if np.isfinite(number) else None


def _numeric_profile(series: pd.Series, column_type: ColumnType, bins: int) -> dict[str, object]:
    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    ordered = np.sort(values[np.isfinite(values)])
    count = int(ordered.size)
    profile: dict[str, object] = {
        "kind": "numeric",
        "type": column_type,
        "count": count,
        "nulls": int(values.size) - count,
    }
    if count == 0:
        return profile | dict.fromkeys(_NUMERIC_STATS)
    if column_type == "integer":  # exact, even beyond 2**53 where float64 rounds
        profile["min"], profile["max"] = int(series.min()), int(series.max())
    else:
        profile["min"], profile["max"] = float(ordered[0]), float(ordered[-1])
    with np.errstate(over="ignore", invalid="ignore"):  # overflow yields inf, reported as None
        quantiles = np.quantile(ordered, QUANTILE_PROBS)
        edges, counts = _histogram(ordered, bins)
        mean, std = ordered.mean(), ordered.std()  # population std (ddof=0): defined for n=1
    profile |= {
        "mean": _finite(mean),
        "std": _finite(std),
        "quantiles": {"probs": list(QUANTILE_PROBS), "values": [_finite(q) for q in quantiles]},
        "histogram": {"edges": [float(e) for e in edges], "counts": counts.tolist()},
    }
    return profile


def _histogram(ordered: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-width bins from min to max, counted like numpy.histogram (last bin closed).

    Counting by binary search on the already sorted values is O(bins log n) and never hits
    numpy's "too many bins for data range" refusal on a very narrow range.
    """
    low, high = float(ordered[0]), float(ordered[-1])
    if low == high:
        return np.array([low, high]), np.array([ordered.size])
    edges = np.linspace(low, high, bins + 1)
    if not np.isfinite(edges).all():  # high - low overflowed; interpolate without the difference
        steps = np.linspace(0.0, 1.0, bins + 1)
        edges = np.maximum.accumulate(low * (1.0 - steps) + high * steps)
        edges[0], edges[-1] = low, high
    positions = np.searchsorted(ordered, edges, side="left")
    positions[-1] = ordered.size
    return edges, np.diff(positions)


def _boolean_profile(series: pd.Series) -> dict[str, object]:
    flags = series.dropna().to_numpy(dtype=bool)
    true = int(flags.sum())
    false = int(flags.size) - true
    return {
        "kind": "categorical",
        "type": "boolean",
        "count": int(flags.size),
        "nulls": int(series.size) - int(flags.size),
        "distinct": int(true > 0) + int(false > 0),
        "counts": {"true": true, "false": false},
        "other": 0,
    }


def _string_profile(series: pd.Series, top_categories: int) -> dict[str, object]:
    present = series.dropna()
    if not isinstance(present.dtype, pd.StringDtype):
        present = present.astype("str")  # one key per printed value, whatever the objects were
    frequencies = present.value_counts(sort=False)
    top = _top_categories(frequencies, top_categories)
    return {
        "kind": "categorical",
        "type": "string",
        "count": int(present.size),
        "nulls": int(series.size) - int(present.size),
        "distinct": len(frequencies),
        "counts": top,
        "other": int(present.size) - sum(top.values()),
    }


def _top_categories(frequencies: pd.Series, limit: int) -> dict[str, int]:
    """The `limit` most frequent values, ties broken by value, most frequent first.

    Only values at the cut-off count need sorting by value, which stays cheap even when a
    million distinct values all occur once.
    """
    if limit == 0 or frequencies.empty:
        return {}
    chosen = frequencies
    if len(frequencies) > limit:
        counts = frequencies.to_numpy(dtype=np.int64)
        cutoff = int(np.partition(counts, len(counts) - limit)[len(counts) - limit])
        above = frequencies[counts > cutoff]
        tied = frequencies[counts == cutoff].index.sort_values()[: limit - len(above)]
        chosen = pd.concat([above, frequencies.loc[tied]])
    ranked = sorted(
        ((str(value), int(count)) for value, count in chosen.items()),
        key=lambda item: (-item[1], item[0]),
    )
    return dict(ranked)


def _datetime_profile(series: pd.Series) -> dict[str, object]:
    present = series.dropna()
    count = int(present.size)
    return {
        "kind": "datetime",
        "type": "datetime",
        "count": count,
        "nulls": int(series.size) - count,
        "min": pd.Timestamp(present.min()).isoformat() if count else None,
        "max": pd.Timestamp(present.max()).isoformat() if count else None,
    }
