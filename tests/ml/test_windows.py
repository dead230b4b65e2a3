import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from app.ml.windows import (
    Dynamic,
    LastN,
    Period,
    Representative,
    WindowSpec,
    dynamic,
    fixed_last_n,
    fixed_period,
    representative,
    select,
    spec_from_dict,
    spec_to_dict,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def production(rows: int, seed: int = 0, change_at: int | None = None) -> pd.DataFrame:
    """Labelled production rows, one a minute, shuffled, with index labels 1000 + time rank.

    The 0/1 error rate is 0.1, and 0.4 from time rank `change_at` on.
    """
    rng = np.random.default_rng(seed)
    rank = np.arange(rows)
    rate = np.where(change_at is not None and rank >= (change_at or 0), 0.4, 0.1)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=rows),
            "label": rng.choice(["a", "b", "c"], size=rows, p=[0.6, 0.3, 0.1]),
            "ts": pd.Timestamp(T0) + pd.to_timedelta(rank, unit="min"),
            "error": (rng.random(rows) < rate).astype(float),
        },
        index=1000 + rank,
    )
    return frame.iloc[rng.permutation(rows)]


def assert_time_ordered_unique(rows: pd.DataFrame) -> None:
    assert rows["ts"].is_monotonic_increasing
    assert not rows.index.has_duplicates


# --- fixed windows -----------------------------------------------------------------------------


def test_last_n_picks_exactly_the_newest_rows() -> None:
    frame = production(500)
    rows = fixed_last_n(frame, 120, "ts")
    assert list(rows.index) == list(range(1380, 1500))  # the 120 newest, oldest first
    assert_time_ordered_unique(rows)
    pd.testing.assert_frame_equal(rows, frame.loc[rows.index])  # rows untouched
    assert len(fixed_last_n(frame, 10_000, "ts")) == 500  # fewer rows than n: all of them


def test_last_n_ties_keep_input_order() -> None:
    frame = pd.DataFrame({"ts": [2, 1, 2, 2], "v": ["p", "q", "r", "s"]})
    assert list(fixed_last_n(frame, 3, "ts")["v"]) == ["p", "r", "s"]


def test_last_n_with_original_training_set() -> None:
    frame = production(200)
    original = pd.DataFrame({"x": [0.5, 0.6], "label": ["a", "b"], "error": [0.0, 0.0]})
    rows = fixed_last_n(frame, 5, "ts", original=original)
    assert list(rows.columns) == list(frame.columns)
    assert list(rows.index) == list(range(7))  # fresh index: the two frames' labels may collide
    assert list(rows["x"][:2]) == [0.5, 0.6] and rows["ts"][:2].isna().all()
    assert list(rows["ts"][2:]) == list(frame.sort_values("ts")["ts"][-5:])
    with pytest.raises(ValueError, match=r"lacks \['error'\]"):
        fixed_last_n(frame, 5, "ts", original=original.drop(columns="error"))
    with pytest.raises(ValueError, match=r"adds \['extra'\]"):
        fixed_last_n(frame, 5, "ts", original=original.assign(extra=1))


def test_period_is_half_open_and_ignores_the_future() -> None:
    frame = production(600)  # minutes 0..599
    now = T0 + timedelta(minutes=500)
    rows = fixed_period(frame, timedelta(minutes=60), now, "ts")
    # now - 60 min < ts <= now: minutes 441..500.
    assert list(rows.index) == list(range(1441, 1501))
    assert_time_ordered_unique(rows)
    empty = fixed_period(frame, timedelta(minutes=5), T0 - timedelta(days=1), "ts")
    assert empty.empty and list(empty.columns) == list(frame.columns)


def test_period_checks_time_zones_and_types() -> None:
    frame = production(50)
    with pytest.raises(ValueError, match="timezone-aware"):
        fixed_period(frame, timedelta(hours=1), datetime(2024, 1, 1), "ts")
    with pytest.raises(ValueError, match="datetime time column"):
        fixed_period(frame.assign(ts=range(50)), timedelta(hours=1), T0, "ts")
    with pytest.raises(ValueError, match="positive timedelta"):
        fixed_period(frame, timedelta(0), T0, "ts")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: fixed_last_n(f, 0, "ts"), "positive integer"),
        (lambda f: fixed_last_n(f, 3, "when"), "lacks column"),
        (lambda f: fixed_last_n(f.iloc[:0], 3, "ts"), "no rows"),
        (lambda f: fixed_last_n(f.assign(ts="x"), 3, "ts"), "datetimes or numbers"),
        (lambda f: fixed_last_n(f.assign(ts=np.nan), 3, "ts"), "missing values"),
        (lambda f: dynamic(f, "ts", min_rows=50, max_rows=10), "must not exceed"),
        (lambda f: dynamic(f, "ts", "nope"), "lacks column"),
        (lambda f: dynamic(f, "ts", lambda g: [0.0]), "one error per row"),
        (lambda f: dynamic(f.assign(error=np.nan), "ts"), "missing or infinite"),
        (lambda f: dynamic(f, "ts", method="cusum"), "unknown change detection"),  # type: ignore[arg-type]
        (lambda f: dynamic(f, "ts", alpha=0.1), "unknown parameter"),
        (lambda f: representative(f, -1, "label", "ts"), "positive integer"),
        (lambda f: representative(f, 5, "label", "ts", buckets=0), "positive integer"),
        (lambda f: representative(f, 5, "y", "ts"), "lacks column"),
        (lambda f: representative(f.assign(label=None), 5, "label", "ts"), "missing values"),
    ],
)
def test_bad_input_is_a_clear_value_error(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(production(40))  # type: ignore[operator]


# --- dynamic window ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["adwin", "page_hinkley"])
def test_dynamic_starts_near_the_true_change(method: str) -> None:
    frame = production(12_000, seed=1, change_at=9_000)
    rows, info = dynamic(frame, "ts", "error", method=method, min_rows=100)  # type: ignore[arg-type]
    assert info.change_found and info.clamped is None
    assert abs(info.start_position - 9_000) < 200
    assert info.rows == len(rows) == 12_000 - info.start_position
    assert rows.index[0] == 1000 + info.start_position  # positions count rows in time order
    assert info.change_time == rows["ts"].iloc[0] and info.change_label == rows.index[0]
    assert info.detected_position is not None and info.detected_position >= 9_000
    assert_time_ordered_unique(rows)
    assert list(rows.index) == list(range(rows.index[0], 13_000))  # everything up to now
    json.dumps(info.to_dict())


def test_dynamic_clamps_to_min_and_max_rows() -> None:
    frame = production(12_000, seed=1, change_at=9_000)
    _, free = dynamic(frame, "ts", min_rows=100)
    start = free.start_position

    rows, info = dynamic(frame, "ts", min_rows=5_000)  # extended back to 5,000 rows
    assert len(rows) == 5_000 and info.clamped == "min_rows"
    assert info.start_position == 7_000 and info.change_position == start
    assert list(rows.index) == list(range(8_000, 13_000))

    rows, info = dynamic(frame, "ts", min_rows=100, max_rows=1_000)  # oldest trimmed
    assert len(rows) == 1_000 and info.clamped == "max_rows"
    assert list(rows.index) == list(range(12_000, 13_000))

    rows, info = dynamic(frame.iloc[:50], "ts", min_rows=100)  # fewer rows than min_rows exist
    assert len(rows) == 50


def test_dynamic_without_a_change_takes_the_last_max_rows() -> None:
    frame = production(6_000, seed=2)
    rows, info = dynamic(frame, "ts", min_rows=100, max_rows=2_500)
    assert not info.change_found and info.change_time is None and info.changes == 0
    assert list(rows.index) == list(range(4_500, 7_000)) and info.clamped == "max_rows"
    rows, info = dynamic(frame, "ts", min_rows=100)
    assert len(rows) == 6_000 and info.clamped is None
    assert info.to_dict()["change_found"] is False


def test_dynamic_errors_from_a_function() -> None:
    frame = production(8_000, seed=3, change_at=6_000)
    frame = frame.assign(prediction=np.where(frame["error"] == 1.0, "wrong", frame["label"]))
    seen: list[bool] = []

    def misclassified(ordered: pd.DataFrame) -> np.ndarray:
        seen.append(bool(ordered["ts"].is_monotonic_increasing))
        return (ordered["prediction"] != ordered["label"]).to_numpy(dtype=float)

    by_function, info = dynamic(frame.drop(columns="error"), "ts", misclassified)
    by_column, _ = dynamic(frame, "ts", "error")
    assert seen == [True]  # the function sees the rows in time order
    assert list(by_function.index) == list(by_column.index)
    assert abs(info.start_position - 6_000) < 200


# --- representative sample ---------------------------------------------------------------------


def strata(frame: pd.DataFrame, buckets: int) -> pd.Series:
    """label x equal-width time bucket, computed independently of the code under test."""
    minutes = (frame["ts"] - frame["ts"].min()) / pd.Timedelta(minutes=1)
    span = minutes.max()
    bucket = np.minimum(np.floor(minutes / span * buckets), buckets - 1).astype(int)
    labelled: pd.Series = frame["label"] + "/" + bucket.astype(str)
    return labelled


def test_representative_allocates_proportionally() -> None:
    frame = production(3_000, seed=4)
    frame = frame[(frame["ts"] < T0 + timedelta(minutes=1_000)) | (frame["x"] > 0)]  # uneven time
    n, buckets = 400, 6
    rows = representative(frame, n, "label", "ts", buckets=buckets, seed=7)
    assert len(rows) == n
    assert_time_ordered_unique(rows)
    assert rows.index.isin(frame.index).all()
    pd.testing.assert_frame_equal(rows, frame.loc[rows.index].sort_values("ts"))

    stratum = strata(frame, buckets)
    population = stratum.value_counts()
    sample = stratum[rows.index].value_counts().reindex(population.index, fill_value=0)
    exact = population * n / len(frame)
    assert len(population) == 18
    assert ((sample - exact).abs() < 1).all(), pd.DataFrame({"sample": sample, "exact": exact})


def test_representative_is_seeded() -> None:
    frame = production(2_000, seed=5)
    first = representative(frame, 300, "label", "ts", buckets=4, seed=1)
    again = representative(frame.sample(frac=1.0, random_state=9), 300, "label", "ts", 4, seed=1)
    other = representative(frame, 300, "label", "ts", buckets=4, seed=2)
    assert list(first.index) == list(again.index)  # the input's row order does not matter
    assert list(first.index) != list(other.index)
    everything = representative(frame, 5_000, "label", "ts")
    assert len(everything) == 2_000 and not everything.index.has_duplicates


def test_representative_rounds_tiny_strata_fairly() -> None:
    # 12 strata of one row, 5 to pick: each quota is 5/12; the seed breaks the ties.
    frame = pd.DataFrame({"ts": range(12), "label": list(range(12))})
    picks = [
        tuple(representative(frame, 5, "label", "ts", buckets=1, seed=s).index) for s in range(20)
    ]
    assert all(len(p) == 5 for p in picks)
    assert len(set(picks)) > 10  # not always the first five


# --- specs and the dispatcher -------------------------------------------------------------------


SPECS: list[WindowSpec] = [
    LastN(n=50, include_original=True),
    Period(period=timedelta(hours=2)),
    Dynamic(method="page_hinkley", min_rows=20, max_rows=300, params={"threshold": 30.0}),
    Representative(n=60, buckets=3, seed=11),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_spec_round_trips_through_json(spec: WindowSpec) -> None:
    stored = json.loads(json.dumps(spec_to_dict(spec)))
    assert spec_from_dict(stored) == spec


def test_select_dispatches_to_each_window() -> None:
    frame = production(1_000, seed=6, change_at=700)
    original = pd.DataFrame({"x": [1.0], "label": ["a"], "error": [0.0]})
    now = T0 + timedelta(minutes=900)
    common = {"time_column": "ts", "label_column": "label", "now": now, "original": original}
    expected = [
        fixed_last_n(frame, 50, "ts", original),
        fixed_period(frame, timedelta(hours=2), now, "ts"),
        dynamic(frame, "ts", method="page_hinkley", min_rows=20, max_rows=300, threshold=30.0)[0],
        representative(frame, 60, "label", "ts", buckets=3, seed=11),
    ]
    for spec, want in zip(SPECS, expected, strict=True):
        for given in (spec, spec_to_dict(spec)):
            selection = select(frame, given, **common)  # type: ignore[arg-type]
            pd.testing.assert_frame_equal(selection.rows, want)
            assert selection.info["rows"] == len(want)
            json.dumps(selection.info)
    assert select(frame, SPECS[2], **common).info["dynamic"]["change_found"]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ({"kind": "sliding"}, {}, "window kind"),
        ({"kind": "last_n", "n": 5, "m": 1}, {}, "bad last_n window spec"),
        ({"kind": "last_n", "n": 0}, {}, "positive integer"),
        ({"kind": "period", "seconds": -3}, {}, "positive number"),
        ({"kind": "dynamic", "min_rows": 9, "max_rows": 3}, {}, "must not exceed"),
        ({"kind": "dynamic", "params": {"lambda": 3}}, {}, "unknown parameter"),
        ({"kind": "last_n", "n": 5, "include_original": True}, {}, "pass original"),
        ({"kind": "period", "seconds": 60}, {}, "needs now"),
        ({"kind": "representative", "n": 5}, {}, "needs label_column"),
    ],
)
def test_select_rejects_bad_specs(spec: dict[str, object], kwargs: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select(production(30), spec, time_column="ts")
