"""Data windows: which labelled production rows a retrain learns from.

A retraining policy names one window; the service materializes its rows as an immutable dataset
version so the run's lineage says exactly what the model saw. The choices trade recency for
volume:

- fixed, last N rows or last period: simple and predictable; optionally on top of the original
  training set so rare cases the model once learned are not forgotten;
- dynamic: the rows since the model's error stream last changed (ADWIN or Page-Hinkley, see
  `app.ml.changepoint`), so a retrain after a concept change learns only the new concept, and
  after a long stable period learns from everything stable;
- representative: a seeded sample stratified by label and time bucket over the whole history,
  for a bounded training budget that still covers every period and class in proportion.

Conventions shared by every function: rows come back in time order (a stable sort, so ties keep
their input order), each input row at most once, and with their input index labels so a caller
can map them back to prediction logs. When the original training set is added it comes first
(it predates production), in time order if it has the time column and as given otherwise, and the
result gets a fresh RangeIndex, since the two frames' labels may collide. Bad input — n <= 0,
missing columns, min_rows > max_rows, an empty frame, times that cannot be ordered — is a
ValueError whose message says what to fix. Frames are never modified.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypeAlias, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.api.types import is_bool_dtype, is_datetime64_any_dtype, is_numeric_dtype

from app.ml.changepoint import METHODS, Method, find_changes

ErrorSource: TypeAlias = str | Callable[[pd.DataFrame], npt.ArrayLike]
Kind = Literal["last_n", "period", "dynamic", "representative"]
KINDS: tuple[Kind, ...] = get_args(Kind)


# --- the four windows -----------------------------------------------------------------------


def fixed_last_n(
    frame: pd.DataFrame, n: int, time_column: str, original: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The n most recent rows (all of them if there are fewer), optionally after `original`."""
    n = _positive_int("n", n)
    ordered = _time_ordered(frame, time_column)
    return _with_original(ordered.iloc[max(len(ordered) - n, 0) :], original, frame, time_column)


def fixed_period(
    frame: pd.DataFrame,
    period: timedelta,
    now: datetime,
    time_column: str,
    original: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Rows with now - period < time <= now (possibly none), optionally after `original`.

    Rows stamped after `now` are left out, so a backtest replaying history at `now` never sees
    the future. `now` must be timezone-aware exactly when the time column is.
    """
    if not isinstance(period, timedelta) or period <= timedelta(0):
        raise ValueError(f"period must be a positive timedelta, got {period!r}")
    ordered = _time_ordered(frame, time_column)
    times = ordered[time_column]
    if not is_datetime64_any_dtype(times.dtype):
        raise ValueError(
            f"a period window needs a datetime time column; {time_column!r} is {times.dtype}"
        )
    if not isinstance(now, datetime):
        raise ValueError(f"now must be a datetime, got {now!r}")
    stamp = pd.Timestamp(now)
    column_tz = getattr(times.dt, "tz", None)
    if (column_tz is None) != (stamp.tz is None):
        raise ValueError(
            f"now ({stamp}) and time column {time_column!r} ({times.dtype}) must both be "
            "timezone-aware or both naive"
        )
    mask = ((times > stamp - pd.Timedelta(period)) & (times <= stamp)).to_numpy(dtype=bool)
    return _with_original(ordered.iloc[np.flatnonzero(mask)], original, frame, time_column)


@dataclass(frozen=True)
class DynamicInfo:
    """Why a dynamic window starts where it does, for the policy evaluation record.

    Positions count rows in time order from 0. `change_*` is where the detector estimates the
    current regime began and `detected_*` where it raised the alarm (both None when no change
    was found); `start_*` is where the returned window begins after clamping.
    """

    method: Method
    params: dict[str, Any]
    rows: int
    changes: int
    change_position: int | None
    change_label: Hashable | None
    change_time: Any
    detected_position: int | None
    detected_time: Any
    start_position: int
    start_time: Any
    clamped: Literal["min_rows", "max_rows"] | None

    @property
    def change_found(self) -> bool:
        return self.change_position is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: timestamps as ISO 8601, numpy scalars as Python numbers."""
        return {
            "method": self.method,
            "params": dict(self.params),
            "rows": self.rows,
            "changes": self.changes,
            "change_found": self.change_found,
            "change_position": self.change_position,
            "change_label": _json_scalar(self.change_label),
            "change_time": _json_scalar(self.change_time),
            "detected_position": self.detected_position,
            "detected_time": _json_scalar(self.detected_time),
            "start_position": self.start_position,
            "start_time": _json_scalar(self.start_time),
            "clamped": self.clamped,
        }


def dynamic(
    frame: pd.DataFrame,
    time_column: str,
    errors: ErrorSource = "error",
    *,
    method: Method = "adwin",
    min_rows: int = 100,
    max_rows: int | None = None,
    **params: Any,
) -> tuple[pd.DataFrame, DynamicInfo]:
    """Rows from the estimated start of the most recent change in the error stream to now.

    `errors` names a column of per-row errors (0/1 misclassification or absolute error) or is a
    function that computes them from the time-ordered frame. The detector's own parameters go
    in `params`. Clamping: a window shorter than min_rows is extended back in time to min_rows
    rows (or to the first row, if there are fewer); one longer than max_rows loses its oldest
    rows down to max_rows. Without a change the window is the last max_rows rows (all rows when
    max_rows is None), so a stable model retrains on as much stable history as allowed.
    """
    if method not in METHODS:
        raise ValueError(f"unknown change detection method {method!r}; use one of {METHODS}")
    min_rows = _positive_int("min_rows", min_rows)
    if max_rows is not None:
        max_rows = _positive_int("max_rows", max_rows)
        if min_rows > max_rows:
            raise ValueError(f"min_rows ({min_rows}) must not exceed max_rows ({max_rows})")
    ordered = _time_ordered(frame, time_column)
    stream = _errors(ordered, errors)
    changes = find_changes(stream, method, **params)
    total = len(ordered)
    last = changes[-1] if changes else None

    start = last.start if last is not None else 0
    clamped: Literal["min_rows", "max_rows"] | None = None
    if total - start < min_rows and start > 0:
        start = max(total - min_rows, 0)
        clamped = "min_rows"
    if max_rows is not None and total - start > max_rows:
        start = total - max_rows
        clamped = "max_rows"

    times = ordered[time_column]
    info = DynamicInfo(
        method=method,
        params=dict(params),
        rows=total - start,
        changes=len(changes),
        change_position=last.start if last is not None else None,
        change_label=ordered.index[last.start] if last is not None else None,
        change_time=times.iloc[last.start] if last is not None else None,
        detected_position=last.detected_at if last is not None else None,
        detected_time=times.iloc[last.detected_at] if last is not None else None,
        start_position=start,
        start_time=times.iloc[start] if start < total else None,
        clamped=clamped,
    )
    return ordered.iloc[start:], info


def representative(
    frame: pd.DataFrame,
    n: int,
    label_column: str,
    time_column: str,
    buckets: int = 10,
    seed: int = 0,
) -> pd.DataFrame:
    """A seeded sample of n rows stratified by label x time bucket over the whole history.

    Time buckets split [first, last] time into `buckets` equal spans. Each stratum h of N_h rows
    gets n * N_h / N rows, rounded by largest remainder (ties broken by the seed), so every
    stratum is within one row of its exact share and the total is exactly n. Proportional
    allocation never asks a stratum for more rows than it has (n * N_h / N <= N_h while n <= N,
    and rounding up only happens below N_h), so no redistribution is ever needed; n >= N
    returns every row. Continuous labels make one stratum per value: pass a binned column.
    """
    n = _positive_int("n", n)
    buckets = _positive_int("buckets", buckets)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    ordered = _time_ordered(frame, time_column)
    _require_columns(ordered, [label_column], "frame")
    total = len(ordered)
    if n >= total:
        return ordered

    codes, _ = pd.factorize(ordered[label_column], use_na_sentinel=True)
    if (codes < 0).any():
        raise ValueError(
            f"label column {label_column!r} has {int((codes < 0).sum())} missing values; "
            "a representative sample stratifies labelled rows only"
        )
    strata = codes.astype(np.int64) * buckets + _time_buckets(ordered[time_column], buckets)
    ids, inverse, sizes = np.unique(strata, return_inverse=True, return_counts=True)
    rng = np.random.default_rng(int(seed))
    allocation = _allocate(sizes.astype(np.int64), n, rng)

    members = np.argsort(inverse, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    chosen: list[npt.NDArray[np.int64]] = []
    for h in range(ids.size):
        if allocation[h] > 0:
            pool = members[bounds[h] : bounds[h + 1]]
            chosen.append(rng.choice(pool, size=int(allocation[h]), replace=False))
    return ordered.iloc[np.sort(np.concatenate(chosen))]


# --- specs: what a policy stores --------------------------------------------------------------


@dataclass(frozen=True)
class LastN:
    """The last n labelled rows."""

    n: int
    include_original: bool = False
    kind: Literal["last_n"] = field(default="last_n", init=False)

    def __post_init__(self) -> None:
        _positive_int("n", self.n)
        _bool("include_original", self.include_original)


@dataclass(frozen=True)
class Period:
    """The labelled rows of the last `period` before `now`."""

    period: timedelta
    include_original: bool = False
    kind: Literal["period"] = field(default="period", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.period, timedelta) or self.period <= timedelta(0):
            raise ValueError(f"period must be a positive timedelta, got {self.period!r}")
        _bool("include_original", self.include_original)


@dataclass(frozen=True)
class Dynamic:
    """Since the last change point of the error stream, clamped to [min_rows, max_rows]."""

    method: Method = "adwin"
    min_rows: int = 100
    max_rows: int | None = None
    errors_column: str = "error"
    params: dict[str, Any] = field(default_factory=dict)
    kind: Literal["dynamic"] = field(default="dynamic", init=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown change detection method {self.method!r}; use {METHODS}")
        _positive_int("min_rows", self.min_rows)
        if self.max_rows is not None and _positive_int("max_rows", self.max_rows) < self.min_rows:
            raise ValueError(f"min_rows ({self.min_rows}) must not exceed max_rows")
        find_changes([], self.method, **self.params)  # unknown or bad parameters fail now


@dataclass(frozen=True)
class Representative:
    """A seeded sample of n rows stratified by label x time bucket."""

    n: int
    buckets: int = 10
    seed: int = 0
    kind: Literal["representative"] = field(default="representative", init=False)

    def __post_init__(self) -> None:
        _positive_int("n", self.n)
        _positive_int("buckets", self.buckets)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")


WindowSpec: TypeAlias = LastN | Period | Dynamic | Representative


def spec_to_dict(spec: WindowSpec) -> dict[str, Any]:
    """The spec as JSON (periods in seconds), readable back by `spec_from_dict`."""
    if isinstance(spec, LastN):
        return {"kind": spec.kind, "n": spec.n, "include_original": spec.include_original}
    if isinstance(spec, Period):
        return {
            "kind": spec.kind,
            "seconds": spec.period.total_seconds(),
            "include_original": spec.include_original,
        }
    if isinstance(spec, Dynamic):
        return {
            "kind": spec.kind,
            "method": spec.method,
            "min_rows": spec.min_rows,
            "max_rows": spec.max_rows,
            "errors_column": spec.errors_column,
            "params": dict(spec.params),
        }
    return {"kind": spec.kind, "n": spec.n, "buckets": spec.buckets, "seed": spec.seed}


def spec_from_dict(data: Mapping[str, Any]) -> WindowSpec:
    """Build a spec from stored JSON; unknown kinds or keys are a ValueError, not ignored."""
    body = dict(data)
    kind = body.pop("kind", None)
    builders: dict[str, Callable[..., WindowSpec]] = {
        "last_n": LastN,
        "period": _period_from_json,
        "dynamic": Dynamic,
        "representative": Representative,
    }
    if kind not in builders:
        raise ValueError(f"window kind must be one of {KINDS}, got {kind!r}")
    try:
        return builders[kind](**body)
    except TypeError as exc:
        raise ValueError(f"bad {kind} window spec {dict(data)!r}: {exc}") from exc


@dataclass(frozen=True)
class Selection:
    """The rows a window selected and a JSON summary of how (for the evaluation record)."""

    rows: pd.DataFrame
    info: dict[str, Any]


def select(
    frame: pd.DataFrame,
    spec: WindowSpec | Mapping[str, Any],
    *,
    time_column: str,
    label_column: str | None = None,
    now: datetime | None = None,
    original: pd.DataFrame | None = None,
    errors: ErrorSource | None = None,
) -> Selection:
    """Apply any window spec (or its stored JSON): the one call a retraining service makes.

    `now` is needed by period windows, `label_column` by representative ones, `original` by
    fixed windows with include_original; `errors` overrides a dynamic spec's errors_column.
    """
    if isinstance(spec, Mapping):
        spec = spec_from_dict(spec)
    summary: dict[str, Any] = {"spec": spec_to_dict(spec)}
    if isinstance(spec, LastN | Period):
        if spec.include_original and original is None:
            raise ValueError("this window includes the original training set: pass original")
        extra = original if spec.include_original else None
        if isinstance(spec, LastN):
            rows = fixed_last_n(frame, spec.n, time_column, extra)
        else:
            if now is None:
                raise ValueError("a period window needs now")
            rows = fixed_period(frame, spec.period, now, time_column, extra)
        summary["original_rows"] = len(extra) if extra is not None else 0
    elif isinstance(spec, Dynamic):
        source = errors if errors is not None else spec.errors_column
        rows, info = dynamic(
            frame,
            time_column,
            source,
            method=spec.method,
            min_rows=spec.min_rows,
            max_rows=spec.max_rows,
            **spec.params,
        )
        summary["dynamic"] = info.to_dict()
    else:
        if label_column is None:
            raise ValueError("a representative window needs label_column")
        rows = representative(frame, spec.n, label_column, time_column, spec.buckets, spec.seed)
    summary["rows"] = len(rows)
    times = rows[time_column].dropna()
    summary["first_time"] = _json_scalar(times.iloc[0]) if len(times) else None
    summary["last_time"] = _json_scalar(times.iloc[-1]) if len(times) else None
    return Selection(rows=rows, info=summary)


# --- helpers ----------------------------------------------------------------------------------


def _time_ordered(frame: pd.DataFrame, time_column: str) -> pd.DataFrame:
    """Validate the frame and sort it by time, stably (ties keep their input order)."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    if frame.empty:
        raise ValueError("the frame has no rows: there is nothing to train on")
    _require_columns(frame, [time_column], "frame")
    times = frame[time_column]
    if isinstance(times, pd.DataFrame):
        raise ValueError(f"time column {time_column!r} appears more than once")
    if is_bool_dtype(times.dtype) or not (
        is_datetime64_any_dtype(times.dtype) or is_numeric_dtype(times.dtype)
    ):
        raise ValueError(
            f"time column {time_column!r} must hold datetimes or numbers, not {times.dtype}"
        )
    missing = int(times.isna().sum())
    if missing:
        raise ValueError(f"time column {time_column!r} has {missing} missing values")
    return frame.sort_values(time_column, kind="stable")


def _with_original(
    window: pd.DataFrame, original: pd.DataFrame | None, frame: pd.DataFrame, time_column: str
) -> pd.DataFrame:
    """Put the original training rows before the window; the columns must agree."""
    if original is None:
        return window
    if not isinstance(original, pd.DataFrame):
        raise ValueError(f"original must be a pandas DataFrame, got {type(original).__name__}")
    lacking = [c for c in frame.columns if c not in original.columns and c != time_column]
    extra = [c for c in original.columns if c not in frame.columns]
    if lacking or extra:
        raise ValueError(
            "the original training set needs the same columns as the production rows, "
            f"except that the time column may be absent: it lacks {lacking} and adds {extra}; "
            "pick the training columns out of both frames first"
        )
    if time_column in original.columns and not original[time_column].isna().any():
        original = original.sort_values(time_column, kind="stable")
    return pd.concat([original, window], ignore_index=True)[list(frame.columns)]


def _errors(ordered: pd.DataFrame, source: ErrorSource) -> npt.NDArray[np.float64]:
    """The per-row errors in time order, from a column or a function of the ordered frame."""
    if isinstance(source, str):
        _require_columns(ordered, [source], "frame")
        raw: Any = ordered[source]
    elif callable(source):
        raw = source(ordered)
    else:
        raise ValueError(f"errors must be a column name or a function, got {source!r}")
    try:
        values = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"errors must be numbers: {exc}") from exc
    if values.shape != (len(ordered),):
        raise ValueError(f"expected one error per row ({len(ordered)}), got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"errors have {int((~np.isfinite(values)).sum())} missing or infinite values"
        )
    return values


def _time_buckets(times: pd.Series, buckets: int) -> npt.NDArray[np.int64]:
    """Equal-width time buckets over [first, last]; the last one is closed on the right."""
    first, last = times.min(), times.max()
    if buckets == 1 or first == last:
        return np.zeros(len(times), dtype=np.int64)
    fraction = ((times - first) / (last - first)).to_numpy(dtype=np.float64)
    bucket: npt.NDArray[np.int64] = np.minimum((fraction * buckets).astype(np.int64), buckets - 1)
    return bucket


def _allocate(
    sizes: npt.NDArray[np.int64], n: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Proportional allocation of n over strata, largest remainder, in exact integers."""
    total = int(sizes.sum())
    scaled = sizes * n  # n * N_h, so the quota N_h * n / total is exact as quotient + remainder
    allocation = scaled // total
    remainders = scaled % total
    left = n - int(allocation.sum())
    order = np.lexsort((rng.random(sizes.size), -remainders))  # biggest remainder first
    allocation[order[:left]] += 1
    return allocation


def _require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; it has {list(frame.columns)}")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def _period_from_json(seconds: float, include_original: bool = False) -> Period:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    if seconds > timedelta.max.total_seconds():
        raise ValueError(f"seconds is too large for a period: {seconds!r}")
    return Period(period=timedelta(seconds=seconds), include_original=include_original)


def _json_scalar(value: Any) -> Any:
    """A timestamp, numpy scalar or label as something json.dumps accepts."""
    if value is None:
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)
