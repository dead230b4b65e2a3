import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.ml.backtest import Alternative, BacktestResult, backtest
from app.ml.training import TrainingError, fit_builtin

T0 = datetime(2024, 1, 1, tzinfo=UTC)
LOGISTIC = "sklearn.linear_model.LogisticRegression"
LINEAR = "sklearn.linear_model.LinearRegression"
NEVER = Alternative("never", {}, {"kind": "last_n", "n": 500})


def stream(
    rows: int = 6_000, seed: int = 0, flip_at: float = 0.5, noise: float = 0.03
) -> pd.DataFrame:
    """One row a minute, two features; the label is x1 + x2 > 0 until `flip_at` of the rows,
    x1 - x2 > 0 after (a concept change the features alone do not show); `noise` of labels flip."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    after = np.arange(rows) >= int(rows * flip_at)
    label = np.where(after, x1 - x2 > 0, x1 + x2 > 0) ^ (rng.random(rows) < noise)
    frame = pd.DataFrame(
        {
            "ts": pd.Timestamp(T0) + pd.to_timedelta(np.arange(rows), unit="min"),
            "x1": x1,
            "x2": x2,
            "label": np.where(label, "yes", "no"),
        }
    )
    return frame.sample(frac=1.0, random_state=seed)  # backtest sorts by time itself


def fitter(target: str = "label", estimator: str = LOGISTIC) -> Any:
    def fit(rows: pd.DataFrame) -> Any:
        return fit_builtin(
            rows,
            target=target,
            estimator=estimator,
            hyperparameters={},
            preprocessing="auto",
            allowed=[estimator],
        )

    return fit


def run(
    frame: pd.DataFrame, *alternatives: Alternative, **options: Any
) -> dict[str, BacktestResult]:
    settings: dict[str, Any] = {"step": 250, "initial": 1_000, "label_column": "label"}
    settings |= options
    results = backtest(
        frame,
        time_column="ts",
        fit=settings.pop("fit", fitter(settings["label_column"])),
        alternatives=alternatives,
        **settings,
    )
    assert [r.name for r in results] == [a.name for a in alternatives]
    for result in results:
        json.dumps(result.to_dict())  # plain JSON all the way down
    return {r.name: r for r in results}


# --- policies against "never" --------------------------------------------------------------


LAST_500 = {"kind": "last_n", "n": 500}
SINCE_CHANGE = {"kind": "dynamic", "method": "adwin", "min_rows": 100}  # only the new concept
RECENT = 15_000  # seconds: the last 250 rows


@pytest.mark.parametrize(
    ("triggers", "window"),
    [
        ({"performance": {"metric": "accuracy", "below": 0.8, "window_seconds": RECENT}}, LAST_500),
        ({"performance": {"metric": "f1", "below": 0.8, "window_seconds": RECENT}}, LAST_500),
        ({"performance": {"metric": "roc_auc", "below": 0.9, "window_seconds": RECENT}}, LAST_500),
        ({"performance": {"metric": "accuracy", "below": 0.8, "min_samples": 50}}, SINCE_CHANGE),
        ({"change": {"method": "adwin"}}, SINCE_CHANGE),
        ({"change": {"method": "page_hinkley", "params": {"threshold": 20}}}, SINCE_CHANGE),
    ],
)
def test_a_triggered_policy_beats_never_retraining_after_a_concept_change(
    triggers: dict[str, Any], window: dict[str, Any]
) -> None:
    results = run(stream(), NEVER, Alternative("policy", triggers, window))
    never, policy = results["never"], results["policy"]
    assert never.retrain_count == 0 and never.retrains == []
    assert never.metric == policy.metric == "accuracy"
    assert policy.overall > never.overall + 0.15, (policy.overall, never.overall)
    assert 1 <= policy.retrain_count <= 4  # reacts to the change, not to every step
    flip = pd.Timestamp(T0) + timedelta(minutes=3_000)
    assert all(pd.Timestamp(r.at) > flip for r in policy.retrains)
    # Both start from the same initial model: identical scores until the first retrain.
    first = policy.retrains[0].at
    before = [
        (a.value, b.value)
        for a, b in zip(never.series, policy.series, strict=True)
        if a.end <= first
    ]
    assert before and all(a == b for a, b in before)
    assert policy.series[-1].value > 0.8 and never.series[-1].value < 0.65


def test_series_covers_every_replayed_row_and_overall_is_row_weighted() -> None:
    result = run(stream(1_100), NEVER, step=30, initial=1_000)["never"]
    assert [s.rows for s in result.series] == [30, 30, 30, 10]
    assert result.series[0].start == pd.Timestamp(T0) + timedelta(minutes=1_000)
    assert result.series[-1].end == pd.Timestamp(T0) + timedelta(minutes=1_099)
    weighted = sum(s.value * s.rows for s in result.series) / 100
    assert result.overall == pytest.approx(weighted)
    payload = result.to_dict()
    assert set(payload) == {"name", "metric", "retrain_count", "overall", "retrains", "series"}
    assert payload["series"][0] == {
        "start": "2024-01-01T16:40:00+00:00",
        "end": "2024-01-01T17:09:00+00:00",
        "rows": 30,
        "value": result.series[0].value,
    }


# --- schedule and cooldown -----------------------------------------------------------------


def test_schedule_retrains_at_the_expected_times() -> None:
    frame = stream(1_440)  # one day of minutes
    every_two_hours = Alternative(
        "two-hourly", {"schedule": {"every_seconds": 7_200}}, {"kind": "last_n", "n": 300}
    )
    result = run(frame, every_two_hours, step=timedelta(minutes=30), initial=timedelta(hours=4))
    # Origin 04:00; half-hour steps end on the half hour; fires at 06:00, 08:00, ... 24:00.
    expected = [pd.Timestamp(T0) + timedelta(hours=h) for h in range(6, 25, 2)]
    assert [r.at for r in result["two-hourly"].retrains] == expected
    assert all(r.triggers == ["schedule"] for r in result["two-hourly"].retrains)
    seen = [
        (r.at - pd.Timestamp(T0)) // timedelta(minutes=1) - 240
        for r in result["two-hourly"].retrains
    ]
    assert [r.rows for r in result["two-hourly"].retrains] == [min(300, n) for n in seen]
    assert result["two-hourly"].to_dict()["retrains"][0]["at"] == "2024-01-01T06:00:00+00:00"


def test_cron_schedule_over_the_data_time() -> None:
    cron = Alternative("cron", {"schedule": {"cron": "0 */6 * * *"}}, {"kind": "last_n", "n": 300})
    result = run(stream(1_440), cron, step=timedelta(hours=1), initial=timedelta(hours=4))
    expected = [pd.Timestamp(T0) + timedelta(hours=h) for h in (6, 12, 18, 24)]
    assert [r.at for r in result["cron"].retrains] == expected


def test_cooldown_blocks_a_second_retrain_inside_it() -> None:
    hourly = {"schedule": {"every_seconds": 3_600}}
    window = {"kind": "last_n", "n": 200}
    results = run(
        stream(1_440),
        Alternative("free", hourly, window),
        Alternative("cooled", hourly, window, cooldown_seconds=2 * 3_600),
        step=timedelta(minutes=30),
        initial=timedelta(hours=4),
    )
    free = [r.at for r in results["free"].retrains]
    cooled = [r.at for r in results["cooled"].retrains]
    assert free == [pd.Timestamp(T0) + timedelta(hours=h) for h in range(5, 25)]
    assert cooled == [pd.Timestamp(T0) + timedelta(hours=h) for h in range(5, 25, 2)]


# --- windows -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "rows"),
    [
        ({"kind": "last_n", "n": 300}, 300),
        ({"kind": "last_n", "n": 300, "include_original": True}, 300 + 1_000),
        ({"kind": "period", "seconds": 3_600}, 60),  # a row a minute, (now - 1h, now]
        ({"kind": "period", "seconds": 3_600, "include_original": True}, 60 + 1_000),
        ({"kind": "representative", "n": 200, "buckets": 4}, 200),
        ({"kind": "dynamic", "method": "adwin", "min_rows": 150}, None),
    ],
)
def test_every_window_kind_retrains_on_the_rows_it_selects(
    window: dict[str, Any], rows: int | None
) -> None:
    schedule = {"schedule": {"every_seconds": 500 * 60}}  # every 500 minutes from the origin
    result = run(stream(3_000, flip_at=0.8), Alternative("w", schedule, window), step=250)["w"]
    assert result.retrain_count == 3  # 500, 1000, 1500 minutes after the origin at 1000
    for retrain in result.retrains:
        assert retrain.rows == retrain.window["rows"]
        assert retrain.window["spec"]["kind"] == window["kind"]
        if rows is not None:
            assert retrain.rows == rows
    if window["kind"] == "dynamic":
        info = result.retrains[-1].window["dynamic"]
        assert info["rows"] == result.retrains[-1].rows >= 150


def test_a_given_original_training_set_is_used_by_include_original() -> None:
    frame = stream(2_000)
    original = frame.drop(columns="ts").iloc[:123]
    window = {"kind": "last_n", "n": 100, "include_original": True}
    schedule = {"schedule": {"every_seconds": 15_000}}  # steps end 1249, 1499, ... minutes
    result = run(frame, Alternative("w", schedule, window), original=original)
    assert [r.rows for r in result["w"].retrains] == [223, 223, 223]
    assert result["w"].retrains[0].window["original_rows"] == 123


# --- regression, numeric time, drift ---------------------------------------------------------


def regression_stream(rows: int = 3_000, seed: int = 1) -> pd.DataFrame:
    """Numeric time (seconds); y = 3 x1 + noise, then y = -3 x1 + noise from the middle on."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    slope = np.where(np.arange(rows) < rows // 2, 3.0, -3.0)
    y = slope * x1 + rng.normal(scale=0.5, size=rows)
    return pd.DataFrame({"ts": np.arange(rows) * 10.0, "x1": x1, "x2": x2, "y": y})


def test_regression_reports_rmse_and_a_float_step_spans_numeric_time() -> None:
    policy = Alternative(
        "policy",
        {"performance": {"metric": "rmse", "above": 1.5, "min_samples": 50}},
        {"kind": "last_n", "n": 400},
    )
    by_r2 = Alternative(
        "r2", {"performance": {"metric": "r2", "below": 0.5}}, {"kind": "last_n", "n": 400}
    )
    results = run(
        regression_stream(),
        NEVER,
        policy,
        by_r2,
        label_column="y",
        fit=fitter("y", LINEAR),
        step=2_500.0,  # seconds of data time: 250 rows of one every 10 s
        initial=5_000.0,
    )
    never, tuned = results["never"], results["policy"]
    assert never.metric == "rmse" and len(never.series) == 10
    assert [s.rows for s in never.series] == [250] * 10
    assert never.series[0].start == 5_000.0 and never.series[0].end == 7_500.0
    mean_square = sum(s.value**2 * s.rows for s in never.series) / 2_500
    assert never.overall == pytest.approx(math.sqrt(mean_square))
    assert never.series[0].value < 0.7 and never.series[-1].value > 4  # the slope flipped
    assert tuned.overall < never.overall * 0.6 and 1 <= tuned.retrain_count <= 3
    assert results["r2"].overall < never.overall * 0.6 and 1 <= results["r2"].retrain_count <= 3
    assert (
        results["r2"].retrains[0].at == tuned.retrains[0].at == 17_500.0
    )  # the end of the flip step


def test_drift_trigger_fires_on_a_feature_shift_and_not_before() -> None:
    frame = stream(9_600, flip_at=1.0)
    frame.loc[frame["ts"] >= pd.Timestamp(T0) + timedelta(minutes=6_000), "x1"] += 2.0
    window = {"kind": "last_n", "n": 1_200}
    results = run(
        frame,
        Alternative("share", {"drift": {"share": 0.5}}, window),
        Alternative("named", {"drift": {"features": ["x1"]}}, window),
        Alternative("unmoved", {"drift": {"features": ["x2"]}}, window),
        step=1_200,  # > 1,000 rows: the normalized Wasserstein distance, no p-value noise
        initial=1_200,
    )
    shift_step_end = pd.Timestamp(T0) + timedelta(minutes=6_000 + 1_199)
    for name in ("share", "named"):
        assert [(r.at, r.triggers) for r in results[name].retrains] == [(shift_step_end, ["drift"])]
    assert results["unmoved"].retrain_count == 0


# --- bad input ----------------------------------------------------------------------------------


def fit_must_not_run(rows: pd.DataFrame) -> Any:
    raise AssertionError("validation must fail before any fit")


def alt(triggers: dict[str, Any], window: dict[str, Any] | None = None, **extra: Any) -> Any:
    return {
        "alternatives": [Alternative("p", triggers, window or {"kind": "last_n", "n": 5}, **extra)]
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (alt({"retrain_daily": {}}), "unknown trigger 'retrain_daily'"),
        (alt({"schedule": {"every": 5}}), r"unknown schedule setting\(s\) \['every'\]"),
        (alt({"schedule": {"cron": "often"}}), "not a cron expression"),
        (alt({"performance": {"metric": "rmse", "above": 1}}), "to a classification label"),
        (alt({"performance": {"metric": "accuracy"}}), "below"),
        (alt({"change": {"method": "cusum"}}), "method must be one of"),
        (alt({"change": {"params": {"alpha": 1}}}), "unknown parameter"),
        (alt({"drift": {"features": ["nope"]}}), "features must be"),
        (alt({}, {"kind": "latest"}), "alternative 'p': window kind"),
        (alt({}, cooldown_seconds=-1), "cooldown_seconds"),
        ({"alternatives": [NEVER, NEVER]}, "distinct names"),
        ({"alternatives": []}, "at least one alternative"),
        ({"time_column": "when"}, r"lacks column\(s\) \['when'\]"),
        ({"label_column": "target"}, "lacks label column 'target'"),
        ({"step": 1}, "widen the step to at least 5 rows"),
        ({"step": timedelta(seconds=1)}, "widen the step"),
        ({"step": 0}, "step must be a positive int"),
        ({"step": "daily"}, "positive int"),
        ({"initial": 6_000}, "nothing is left to replay"),
        ({"initial": timedelta(days=30)}, "nothing is left to replay"),
        ({"initial": timedelta(0)}, "initial must be a positive"),
        (
            alt({}, {"kind": "last_n", "n": 5, "include_original": True})
            | {"original": pd.DataFrame({"a": [1]})},
            r"original: .* lacks \['x1', 'x2', 'label'\]",
        ),
    ],
)
def test_bad_input_is_a_value_error_that_says_what_to_fix(
    change: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {
        "time_column": "ts",
        "label_column": "label",
        "fit": fit_must_not_run,
        "alternatives": [NEVER],
        "step": 250,
        "initial": 1_000,
    } | change
    with pytest.raises(ValueError, match=message):
        backtest(stream(6_000), **arguments)


def test_period_and_cron_need_a_datetime_time_column() -> None:
    frame = regression_stream(200)
    for alternative in (
        Alternative("p", {}, {"kind": "period", "seconds": 60}),
        Alternative("p", {"schedule": {"cron": "0 * * * *"}}, {"kind": "last_n", "n": 5}),
    ):
        with pytest.raises(ValueError, match="datetime time column"):
            backtest(
                frame,
                time_column="ts",
                label_column="y",
                fit=fit_must_not_run,
                alternatives=[alternative],
                step=50,
                initial=100,
            )


def test_a_failing_fit_keeps_its_type_and_names_the_alternative_and_time() -> None:
    calls = {"n": 0}

    def flaky(rows: pd.DataFrame) -> Any:
        calls["n"] += 1
        if calls["n"] > 1:
            raise TrainingError("only one class in the rows")
        return fitter()(rows)

    alternative = Alternative(
        "hourly", {"schedule": {"every_seconds": 3_600}}, {"kind": "last_n", "n": 50}
    )
    expected = r"alternative 'hourly': retraining at 2024-01-01T20:49:00\+00:00 on 50 rows failed"
    with pytest.raises(TrainingError, match=expected + ": only one class"):
        run(stream(2_000), alternative, fit=flaky)
