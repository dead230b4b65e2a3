"""Backtest retraining policies: replay a labelled history through each and report the evidence.

Every retrain costs compute and a new model to vet; every one skipped leaves a stale model
serving. Which trade suits a model is an empirical question, so a policy's owner replays the
history it would have seen. The first rows train an initial model, shared by every alternative;
the rest arrive step by step. Each step is scored by the model in place, then the triggers are
evaluated at the step's end, as production would, and when one fires (outside the cooldown) a
window of the rows seen so far (`app.ml.windows`) retrains the model.

Time: `initial` and `step` are an int (rows) or a span of data time: a timedelta, or a float of
seconds. A numeric time column is taken to count seconds, so every `*_seconds` setting is in its
units. Row steps end at their last row's time; time steps are the half-open spans
[origin + k*step, origin + (k+1)*step), ending at their right edge, where the origin is the end
of an initial period (or the first replayed row's time); spans without rows are skipped. Windows
select from the replayed rows; the initial rows are the original training set by default.

Triggers, a JSON object whose entries are OR-ed ({} never retrains):
- "schedule": {"every_seconds": s} from the origin, or {"cron": "0 0 * * 1"} over datetimes;
  a fire blocked by the cooldown is dropped, as a real scheduler's would be;
- "performance": {"metric": m, "below": x} or {..., "above": x}, "min_samples" (30), optional
  "window_seconds": the metric over the rows since the last retrain (at most that recent); m is
  accuracy (default), precision, recall, f1 or roc_auc, or for regression rmse (default), mae
  or r2; a metric undefined on those rows (one class, constant label) gives no verdict;
- "drift": {"share": 0.5} and/or {"features": [...]}: the step's features against the current
  model's training rows (`app.ml.drift`): the share of drifted features, or any named one;
- "change": {"method": "adwin" | "page_hinkley", "params": {...}}: a change point in the per-row
  error stream (0/1 misclassification or absolute error) since the last retrain.

A model cannot change until the next retrain and the change detectors are prefix-consistent, so
each model predicts ahead in doubling chunks: predictions and detector runs cost O(rows) per
model, not O(rows * steps). The history is sorted once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from croniter import croniter
from pandas.api.types import is_datetime64_any_dtype
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from app.ml import windows
from app.ml.changepoint import METHODS, find_changes
from app.ml.drift import dataset_drift
from app.ml.profile import profile_frame
from app.ml.training import is_classifier_target, target_array

MAX_STEPS = 1000
TRIGGERS = ("schedule", "performance", "drift", "change")
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
REGRESSION_METRICS = ("rmse", "mae", "r2")
_KEYS: dict[str, frozenset[str]] = {
    "schedule": frozenset({"every_seconds", "cron"}),
    "performance": frozenset({"metric", "below", "above", "min_samples", "window_seconds"}),
    "drift": frozenset({"share", "features"}),
    "change": frozenset({"method", "params"}),
}
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Alternative:
    """One policy to replay: its triggers (JSON, see the module docstring) and window spec."""

    name: str
    triggers: dict[str, Any]
    window: dict[str, Any]
    cooldown_seconds: float = 0


@dataclass(frozen=True)
class Retrain:
    """A retrain: at the step end `at`, for the trigger names, on `rows` rows (window info)."""

    at: Any
    triggers: list[str]
    rows: int
    window: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": _json_time(self.at)}


@dataclass(frozen=True)
class StepScore:
    """The metric of the model in place over one step's rows."""

    start: Any
    end: Any
    rows: int
    value: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "start": _json_time(self.start), "end": _json_time(self.end)}


@dataclass(frozen=True)
class BacktestResult:
    """What one alternative did and how well its models did; `overall` is over all replayed
    rows (accuracy: row-weighted mean; RMSE: root of the mean squared error)."""

    name: str
    metric: Literal["accuracy", "rmse"]
    retrains: list[Retrain]
    series: list[StepScore]
    overall: float

    @property
    def retrain_count(self) -> int:
        return len(self.retrains)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: times as ISO 8601 strings (or numbers for a numeric time column)."""
        return {
            "name": self.name,
            "metric": self.metric,
            "retrain_count": self.retrain_count,
            "overall": self.overall,
            "retrains": [r.to_dict() for r in self.retrains],
            "series": [s.to_dict() for s in self.series],
        }


def backtest(
    frame: pd.DataFrame,
    *,
    time_column: str,
    label_column: str,
    fit: Callable[[pd.DataFrame], Any],
    alternatives: Sequence[Alternative],
    step: timedelta | int | float,
    initial: timedelta | int | float,
    original: pd.DataFrame | None = None,
) -> list[BacktestResult]:
    """Replay `frame` through every alternative, in the order given (see the module docstring).

    Rows without a label are dropped. Everything is validated before the first fit. Bad input is
    a ValueError saying what to fix; a failed fit keeps its type (e.g. TrainingError) with the
    alternative and the time prepended.
    """
    history = _history(frame, time_column, label_column, initial, step, original)
    names = [getattr(a, "name", None) for a in alternatives]
    if not names or len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"give at least one alternative, with distinct names; got {names}")
    plans = [_plan(alternative, history) for alternative in alternatives]
    if original is not None and any(getattr(p.window, "include_original", 0) for p in plans):
        try:  # the columns must agree: fail now rather than at the first retrain
            windows.fixed_last_n(history.frame.iloc[:1], 1, time_column, original)
        except ValueError as exc:
            raise ValueError(f"original: {exc}") from exc
    until = _json_time(history.times.iloc[history.n0 - 1])
    rows = history.frame.iloc[: history.n0].drop(columns=[time_column])
    first = _fit(fit, rows, f"the initial model (rows up to {until})")
    return [_Replay(history, plan, fit, first).run() for plan in plans]


# --- preparing the history ----------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    start: int  # first row position
    stop: int  # one past the last row position
    start_time: Any
    end_time: Any
    end_seconds: float


@dataclass(frozen=True)
class _History:
    """The labelled history sorted by time once, with times as float seconds since the first."""

    frame: pd.DataFrame  # time order, RangeIndex: index label == position
    features: pd.DataFrame  # without the time and label columns
    labels: npt.NDArray[Any]
    times: pd.Series[Any]
    seconds: FloatArray
    time_column: str
    label_column: str
    is_datetime: bool
    classify: bool
    classes: list[Any]
    n0: int  # rows training the initial model
    origin: float  # where the replay starts, in seconds
    steps: list[_Step]
    original: pd.DataFrame


def _history(
    frame: pd.DataFrame,
    time_column: str,
    label_column: str,
    initial: object,
    step: object,
    original: pd.DataFrame | None,
) -> _History:
    rows = len(frame) if isinstance(frame, pd.DataFrame) else 1
    try:  # the windows' checks (a DataFrame with rows, times that can be ordered) and sort
        ordered = windows.fixed_last_n(frame, max(rows, 1), time_column)
    except ValueError as exc:
        raise ValueError(f"the history: {exc}") from exc
    if label_column not in frame.columns or label_column == time_column:
        raise ValueError(
            f"the history lacks label column {label_column!r}; it has {list(frame.columns)}"
        )
    if ordered[label_column].isna().any():
        ordered = ordered[ordered[label_column].notna()]
    if len(ordered) < 2 or ordered.shape[1] < 3:
        raise ValueError(
            f"the history has {len(ordered)} labelled row(s) and {ordered.shape[1] - 2} feature "
            "column(s): a backtest needs features, rows to train on and rows to replay"
        )
    ordered = ordered.reset_index(drop=True)
    is_datetime = is_datetime64_any_dtype(ordered[time_column].dtype)
    times = ordered[time_column]
    if is_datetime:
        seconds = ((times - times.iloc[0]) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64)
    else:
        seconds = times.to_numpy(dtype=np.float64) - float(times.iloc[0])
    n0, origin = _initial(seconds, initial)
    steps = _steps(times, seconds, n0, origin, step, is_datetime)
    labels = target_array(ordered[label_column])
    classify = is_classifier_target(ordered[label_column])
    try:
        classes = sorted(pd.unique(labels).tolist()) if classify else []
    except TypeError:  # mixed label types: any fixed order will do
        classes = sorted(pd.unique(labels).tolist(), key=str)
    features = ordered.drop(columns=[time_column, label_column])
    return _History(
        ordered, features, labels, times, seconds, time_column, label_column, is_datetime,
        classify, classes, n0, origin, steps, ordered.iloc[:n0] if original is None else original,
    )  # fmt: skip


def _amount(name: str, value: object) -> tuple[Literal["rows", "seconds"], float]:
    """An int is a number of rows; a timedelta or a float is a span of data time in seconds."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool) and value > 0:
        return "rows", int(value)
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, float | np.floating) and math.isfinite(value) and value > 0:
        return "seconds", float(value)
    raise ValueError(
        f"{name} must be a positive int (rows), timedelta or float (seconds), got {value!r}"
    )


def _initial(seconds: FloatArray, initial: object) -> tuple[int, float]:
    """How many rows train the initial model, and the replay's origin in seconds."""
    kind, amount = _amount("initial", initial)
    n0 = int(amount) if kind == "rows" else int(np.searchsorted(seconds, amount, "left"))
    if n0 >= len(seconds):
        raise ValueError(
            f"initial covers the whole history ({len(seconds)} rows): nothing is left to "
            "replay; use fewer rows or a shorter period"
        )
    return n0, float(seconds[n0]) if kind == "rows" else amount


def _steps(
    times: pd.Series[Any], seconds: FloatArray, n0: int, origin: float, step: object, dated: bool
) -> list[_Step]:
    total = len(seconds)
    kind, amount = _amount("step", step)
    span = float(seconds[-1]) - origin
    count = math.ceil((total - n0) / amount) if kind == "rows" else math.floor(span / amount) + 1
    if count > MAX_STEPS:
        wider = math.ceil((total - n0) / MAX_STEPS) if kind == "rows" else span / MAX_STEPS
        raise ValueError(
            f"the step makes {count} steps, more than the limit of {MAX_STEPS}: widen the step "
            f"to at least {wider:g} {kind}"
        )
    if kind == "rows":
        starts = list(range(n0, total, int(amount)))
        stops = [*starts[1:], total]
        return [
            _Step(s, e, times.iloc[s], times.iloc[e - 1], float(seconds[e - 1]))
            for s, e in zip(starts, stops, strict=True)
        ]
    edges = (origin + amount * np.arange(count + 1, dtype=np.float64)).tolist()
    cuts = np.maximum(np.searchsorted(seconds, edges, side="left"), n0).tolist()
    cuts[-1] = total
    first = times.iloc[0]
    at = [first + pd.Timedelta(seconds=e) if dated else float(first) + e for e in edges]
    return [
        _Step(cuts[k], cuts[k + 1], at[k], at[k + 1], edges[k + 1])
        for k in range(count)
        if cuts[k] < cuts[k + 1]
    ]


# --- parsing alternatives -------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    name: str
    window: windows.WindowSpec
    cooldown: float
    triggers: dict[str, dict[str, Any]]  # validated, with defaults filled in


def _plan(alt: Alternative, history: _History) -> _Plan:
    where = f"alternative {alt.name!r}"
    try:
        spec = windows.spec_from_dict(alt.window)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{where}: {exc}") from exc
    if isinstance(spec, windows.Period) and not history.is_datetime:
        raise ValueError(f"{where}: a period window needs a datetime time column")
    if not _number(alt.cooldown_seconds) or alt.cooldown_seconds < 0:
        raise ValueError(f"{where}: cooldown_seconds must be a number >= 0")
    if not isinstance(alt.triggers, Mapping):
        raise ValueError(f"{where}: triggers must be a JSON object, e.g. {{}} to never retrain")
    triggers = {}
    for trigger, config in alt.triggers.items():
        if trigger not in TRIGGERS:
            raise ValueError(f"{where}: unknown trigger {trigger!r}; use one of {TRIGGERS}")
        if not isinstance(config, Mapping):
            raise ValueError(f"{where}: the {trigger} trigger must be a JSON object")
        unknown = sorted(set(config) - _KEYS[trigger])
        if unknown:
            takes = sorted(_KEYS[trigger])
            raise ValueError(f"{where}: unknown {trigger} setting(s) {unknown}; it takes {takes}")
        triggers[trigger] = dict(config)
        _trigger(trigger, triggers[trigger], history, f"{where}: {trigger}")
    return _Plan(alt.name, spec, float(alt.cooldown_seconds), triggers)


def _trigger(name: str, config: dict[str, Any], history: _History, where: str) -> None:
    """Check one trigger's settings and fill in its defaults."""
    if name == "schedule":
        if len(config) != 1:
            raise ValueError(f"{where} needs exactly one of every_seconds or cron")
        cron = config.get("cron")
        if cron is not None and (not isinstance(cron, str) or not croniter.is_valid(cron)):
            raise ValueError(f"{where}: {cron!r} is not a cron expression, e.g. '0 0 * * 1'")
        if cron is not None and not history.is_datetime:
            raise ValueError(f"{where}: cron needs a datetime time column; use every_seconds")
        if cron is None and (not _number(config["every_seconds"]) or config["every_seconds"] <= 0):
            raise ValueError(f"{where}: every_seconds must be a positive number")
    elif name == "performance":
        allowed = CLASSIFICATION_METRICS if history.classify else REGRESSION_METRICS
        metric = config.setdefault("metric", allowed[0])
        if metric not in allowed:
            task = "classification" if history.classify else "regression"
            raise ValueError(f"{where}: {metric!r} does not apply to a {task} label; use {allowed}")
        bounds = [k for k in ("below", "above") if k in config]
        if len(bounds) != 1 or not _number(config[bounds[0]]):
            raise ValueError(f"{where} needs one number: below (e.g. accuracy) or above (rmse)")
        samples, span = config.setdefault("min_samples", 30), config.get("window_seconds")
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ValueError(f"{where}: min_samples must be a positive integer, got {samples!r}")
        if span is not None and (not _number(span) or span <= 0):
            raise ValueError(f"{where}: window_seconds must be a positive number, got {span!r}")
    elif name == "drift":
        share, names = config.get("share"), config.get("features")
        if share is not None and (not _number(share) or not 0 < share <= 1):
            raise ValueError(f"{where}: share must be a number in (0, 1], got {share!r}")
        known = [str(c) for c in history.features.columns]
        if names is not None and (not isinstance(names, list) or not set(names) <= set(known)):
            raise ValueError(f"{where}: features must be a list of feature names from {known}")
    else:
        method, params = config.setdefault("method", "adwin"), config.setdefault("params", {})
        if method not in METHODS or not isinstance(params, Mapping):
            raise ValueError(f"{where}: method must be one of {METHODS}, params a JSON object")
        try:
            find_changes([], method, **params)  # unknown or bad parameters fail now
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc


# --- replaying --------------------------------------------------------------------------------


class _Replay:
    """One alternative's pass over the history: per-row errors, the model in place, retrains."""

    def __init__(
        self, history: _History, plan: _Plan, fit: Callable[[pd.DataFrame], Any], first: Any
    ) -> None:
        self.history, self.plan, self.fit = history, plan, fit
        self.where = f"alternative {plan.name!r}"
        self.errors = np.zeros(len(history.frame), dtype=np.float64)
        self.predictions = np.empty(len(history.frame), dtype=object)
        wants_scores = plan.triggers.get("performance", {}).get("metric") == "roc_auc"
        shape = (len(history.frame), len(history.classes))
        self.scores = np.zeros(shape, dtype=np.float64) if wants_scores else None
        self._use(first, history.n0, history.features.iloc[: history.n0])

    def _use(self, model: Any, start: int, train: pd.DataFrame) -> None:
        """Put a model in place from row `start`; its training features are the drift reference."""
        self.model, self.start, self.covered, self.train = model, start, start, train
        self.profile: dict[str, object] | None = None
        self.alarms: list[int] = []  # change alarms, as row positions

    def run(self) -> BacktestResult:
        history, plan, triggers = self.history, self.plan, self.plan.triggers
        schedule = triggers.get("schedule")
        next_fire = self._next_fire(schedule, history.origin) if schedule else math.inf
        last_retrain = -math.inf
        retrains: list[Retrain] = []
        series: list[StepScore] = []
        for step in history.steps:
            self._predict_until(step.stop)
            value = _score(self.errors[step.start : step.stop], history.classify)
            series.append(StepScore(step.start_time, step.end_time, step.stop - step.start, value))
            now, fired = step.end_seconds, list[str]()
            if schedule and now >= next_fire:
                fired.append("schedule")
                next_fire = self._next_fire(schedule, now, step.end_time)
            if "performance" in triggers and self._performance(triggers["performance"], step):
                fired.append("performance")
            if "drift" in triggers and self._drift(triggers["drift"], step):
                fired.append("drift")
            if "change" in triggers and any(at < step.stop for at in self.alarms):
                fired.append("change")
            if fired and now - last_retrain >= plan.cooldown:
                retrains.append(self._retrain(step, fired))
                last_retrain = now
        overall = _score(self.errors[history.n0 :], history.classify)
        metric: Literal["accuracy", "rmse"] = "accuracy" if history.classify else "rmse"
        return BacktestResult(plan.name, metric, retrains, series, overall)

    def _predict_until(self, stop: int) -> None:
        """Predict ahead in doubling chunks, so a model predicts each row once in O(log) calls."""
        history, begin = self.history, self.covered
        if begin >= stop:
            return
        end = min(len(history.frame), max(stop, 2 * begin - self.start))
        try:
            predicted = np.asarray(self.model.predict(history.features.iloc[begin:end]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{self.where}: the model could not predict: {exc}") from exc
        if predicted.shape != (end - begin,):
            raise ValueError(
                f"{self.where}: predict returned shape {predicted.shape}, not one value a row"
            )
        truth = history.labels[begin:end]
        if history.classify:
            self.errors[begin:end] = np.asarray(predicted != truth, dtype=np.float64)
        else:
            self.errors[begin:end] = np.abs(predicted.astype(float) - truth.astype(float))
            if not np.isfinite(self.errors[begin:end]).all():
                raise ValueError(f"{self.where}: the model predicted non-finite values")
        self.predictions[begin:end] = predicted
        if self.scores is not None:  # probabilities in the history's class order
            try:
                proba = self.model.predict_proba(history.features.iloc[begin:end])
                columns = [history.classes.index(c) for c in self.model.classes_]
            except (AttributeError, ValueError, TypeError) as exc:
                raise ValueError(f"{self.where}: roc_auc needs predict_proba: {exc}") from exc
            self.scores[begin:end] = 0.0
            self.scores[begin:end, columns] = proba
        self.covered = end
        change = self.plan.triggers.get("change")
        if change:  # prefix-consistent: the alarms found so far are final
            found = find_changes(
                self.errors[self.start : end], change["method"], **change["params"]
            )
            self.alarms = [self.start + c.detected_at for c in found]

    def _next_fire(self, schedule: dict[str, Any], after: float, at: Any = None) -> float:
        """The first fire time strictly after `after` seconds, anchored at the origin."""
        origin, first = self.history.origin, self.history.times.iloc[0]
        if "every_seconds" in schedule:
            every = float(schedule["every_seconds"])
            return origin + every * (math.floor((after - origin) / every) + 1)
        start = pd.Timestamp(first + pd.Timedelta(seconds=after) if at is None else at)
        fire = pd.Timestamp(croniter(schedule["cron"], start.to_pydatetime()).get_next(datetime))
        return float((fire - first) / pd.Timedelta(seconds=1))

    def _performance(self, config: dict[str, Any], step: _Step) -> bool:
        history, low = self.history, self.start
        if config.get("window_seconds") is not None:
            edge = step.end_seconds - float(config["window_seconds"])
            low = max(low, int(np.searchsorted(history.seconds, edge, side="right")))
        if step.stop - low < config["min_samples"]:
            return False
        errors, truth = self.errors[low : step.stop], history.labels[low : step.stop]
        metric, classes = config["metric"], history.classes
        try:
            if metric in ("accuracy", "rmse"):
                value = _score(errors, metric == "accuracy")
            elif metric == "mae":
                value = float(errors.mean())
            elif metric == "r2":  # undefined on a constant label: no verdict
                spread = truth.astype(float) - float(truth.astype(float).mean())
                value = 1.0 - float(np.sum(errors**2)) / float(np.sum(spread**2))
            elif metric == "roc_auc" and self.scores is not None:  # one class present: no verdict
                scores = self.scores[low : step.stop]
                value = float(
                    roc_auc_score(truth == classes[1], scores[:, 1])
                    if len(classes) == 2
                    else roc_auc_score(truth, scores, multi_class="ovr", labels=classes)
                )
            else:
                guess = self.predictions[low : step.stop]
                guess = guess if truth.dtype == object else guess.astype(truth.dtype)
                binary = {"average": "binary", "pos_label": classes[-1]}
                options = binary if len(classes) == 2 else {"average": "macro"}
                score = {"precision": precision_score, "recall": recall_score, "f1": f1_score}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # undefined precision or recall count as 0
                    value = float(score[metric](truth, guess, zero_division=0, **options))
        except (ValueError, ZeroDivisionError):
            return False
        if not math.isfinite(value):  # e.g. roc_auc on one class, in newer scikit-learn
            return False
        return bool(value < config["below"] if "below" in config else value > config["above"])

    def _drift(self, config: dict[str, Any], step: _Step) -> bool:
        features = self.history.features
        names = config.get("features") or [str(c) for c in features.columns]
        current = {str(c): features[c].iloc[step.start : step.stop] for c in features.columns
                   if str(c) in names}  # fmt: skip
        try:
            if self.profile is None:
                self.profile = profile_frame(self.train)
            report = dataset_drift(self.profile, current, share=config.get("share", 0.5))
        except ValueError as exc:
            raise ValueError(f"{self.where} at {step.end_time}: no drift verdict: {exc}") from exc
        if "features" in config and "share" not in config:
            return bool(report.drifted_features)
        return report.dataset_drifted

    def _retrain(self, step: _Step, fired: list[str]) -> Retrain:
        """Select the window from the rows seen so far and fit the next model on it."""
        history = self.history
        where = f"{self.where}: retraining at {_json_time(step.end_time)}"

        def seen_errors(ordered: pd.DataFrame) -> FloatArray:
            return self.errors[ordered.index.to_numpy(dtype=np.int64)]

        try:
            selection = windows.select(
                history.frame.iloc[history.n0 : step.stop],  # the rows seen so far
                self.plan.window,
                time_column=history.time_column,
                label_column=history.label_column,
                now=step.end_time if history.is_datetime else None,
                original=history.original,
                errors=seen_errors,
            )
        except ValueError as exc:
            raise ValueError(f"{where}: the window could not be selected: {exc}") from exc
        if selection.rows.empty:
            raise ValueError(f"{where}: the window selected no rows; widen it")
        rows = selection.rows.drop(columns=[history.time_column])
        model = _fit(self.fit, rows, f"{where} on {len(rows)} rows")
        self._use(model, step.stop, rows.drop(columns=[history.label_column]))
        return Retrain(step.end_time, fired, len(rows), selection.info)


def _score(errors: FloatArray, classify: bool) -> float:
    """Accuracy from 0/1 errors, or RMSE from absolute errors."""
    return float(1.0 - errors.mean()) if classify else math.sqrt(float(np.mean(errors**2)))


def _fit(fit: Callable[[pd.DataFrame], Any], rows: pd.DataFrame, what: str) -> Any:
    try:
        model = fit(rows)
    except ValueError as exc:  # TrainingError included: keep the type, add the context
        try:
            restated = type(exc)(f"{what} failed: {exc}")
        except TypeError:
            restated = ValueError(f"{what} failed: {exc}")
        raise restated from exc
    if not callable(getattr(model, "predict", None)):
        raise ValueError(f"{what}: fit returned {type(model).__name__}, which has no predict()")
    return model


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _json_time(value: Any) -> Any:
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    return value.item() if isinstance(value, np.generic) else value
