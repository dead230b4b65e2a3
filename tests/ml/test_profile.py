import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.ml.profile import QUANTILE_PROBS, infer_schema, profile_frame
from app.ml.tabular import read_table


def column(profile: dict[str, object], name: str) -> dict[str, Any]:
    columns = profile["columns"]
    assert isinstance(columns, dict)
    result = columns[name]
    assert isinstance(result, dict)
    return result


# --- schema -----------------------------------------------------------------------------------


def test_infer_schema_types_and_nullability() -> None:
    frame = pd.DataFrame(
        {
            "i": [1, 2, 3],
            "ni": pd.array([1, None, 3], dtype="Int64"),
            "u": np.array([1, 2, 3], dtype=np.uint8),
            "f": [0.5, np.nan, 1.5],
            "b": [True, False, True],
            "nb": pd.array([True, None, False], dtype="boolean"),
            "dt": pd.to_datetime(pd.Series(["2024-01-01", None, "2024-01-03"])),
            "tz": pd.date_range("2024-01-01", periods=3, tz="Europe/Paris"),
            "s": pd.Series(["a", "b", None], dtype="str"),
            "o": pd.Series(["a", "b", "c"], dtype=object),
            "cat": pd.Categorical(["x", "y", "x"]),
            "text_dates": ["2024-01-01", "2024-01-02", "2024-01-03"],
            "empty": [np.nan, np.nan, np.nan],
        }
    )
    assert infer_schema(frame) == [
        {"name": "i", "type": "integer", "nullable": False},
        {"name": "ni", "type": "integer", "nullable": True},
        {"name": "u", "type": "integer", "nullable": False},
        {"name": "f", "type": "float", "nullable": True},
        {"name": "b", "type": "boolean", "nullable": False},
        {"name": "nb", "type": "boolean", "nullable": True},
        {"name": "dt", "type": "datetime", "nullable": True},
        {"name": "tz", "type": "datetime", "nullable": False},
        {"name": "s", "type": "string", "nullable": True},
        {"name": "o", "type": "string", "nullable": False},
        {"name": "cat", "type": "string", "nullable": False},
        {"name": "text_dates", "type": "string", "nullable": False},
        {"name": "empty", "type": "float", "nullable": True},
    ]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1, None, 3], "integer"),
        ([1.5, 2, None], "float"),
        ([Decimal("1.5"), None], "float"),
        ([True, None, False], "boolean"),
        ([date(2024, 1, 1), None], "datetime"),
        ([datetime(2024, 1, 1, 12), None], "datetime"),
        (["a", 1, None], "string"),
        ([None, None], "string"),
    ],
)
def test_infer_schema_looks_at_object_values(values: list[object], expected: str) -> None:
    frame = pd.DataFrame({"c": pd.Series(values, dtype=object)})
    assert infer_schema(frame) == [{"name": "c", "type": expected, "nullable": None in values}]


def test_infer_schema_names_are_strings() -> None:
    assert infer_schema(pd.DataFrame({0: [1]}))[0]["name"] == "0"


# --- numeric ----------------------------------------------------------------------------------


def test_numeric_profile_matches_numpy() -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(10, 3, size=5_000)
    with_nulls = np.concatenate([values, [np.nan] * 17])
    profile = profile_frame(pd.DataFrame({"x": with_nulls}), bins=12)
    x = column(profile, "x")
    assert profile["rows"] == 5_017
    assert (x["kind"], x["type"], x["count"], x["nulls"]) == ("numeric", "float", 5_000, 17)
    assert x["min"] == values.min()
    assert x["max"] == values.max()
    assert x["mean"] == pytest.approx(values.mean())
    assert x["std"] == pytest.approx(values.std())
    probs = x["quantiles"]["probs"]
    assert len(probs) == 101
    assert probs[0] == 0.0
    assert probs[1] == 0.01
    assert probs[-1] == 1.0
    np.testing.assert_allclose(x["quantiles"]["values"], np.quantile(values, probs))
    edges = np.asarray(x["histogram"]["edges"])
    np.testing.assert_allclose(edges, np.linspace(values.min(), values.max(), 13))
    expected_counts, _ = np.histogram(values, bins=edges)
    assert x["histogram"]["counts"] == expected_counts.tolist()
    assert sum(x["histogram"]["counts"]) == 5_000


def test_histogram_counts_values_on_edges_like_numpy() -> None:
    values = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10], dtype=float)
    x = column(profile_frame(pd.DataFrame({"x": values}), bins=5), "x")
    assert x["histogram"]["edges"] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert x["histogram"]["counts"] == np.histogram(values, bins=5)[0].tolist()
    assert x["histogram"]["counts"] == [2, 2, 2, 2, 5]


def test_nullable_integer_profile_keeps_exact_bounds() -> None:
    big = 2**62 + 1
    series = pd.array([big, None, 5, 7], dtype="Int64")
    x = column(profile_frame(pd.DataFrame({"n": series})), "n")
    assert (x["type"], x["count"], x["nulls"]) == ("integer", 3, 1)
    assert x["min"] == 5
    assert x["max"] == big
    assert isinstance(x["max"], int)


def test_constant_column_gets_one_bin() -> None:
    x = column(profile_frame(pd.DataFrame({"c": [4, 4, 4, 4]})), "c")
    assert x["histogram"] == {"edges": [4.0, 4.0], "counts": [4]}
    assert x["std"] == 0.0
    assert set(x["quantiles"]["values"]) == {4.0}


def test_infinities_are_kept_out_of_the_statistics() -> None:
    x = column(profile_frame(pd.DataFrame({"f": [1.0, np.inf, -np.inf, 3.0, np.nan]})), "f")
    assert (x["count"], x["nulls"], x["min"], x["max"]) == (2, 3, 1.0, 3.0)


def test_extreme_range_stays_finite() -> None:
    top = np.finfo(np.float64).max
    x = column(profile_frame(pd.DataFrame({"f": [-top, 0.0, top]}), bins=4), "f")
    edges = x["histogram"]["edges"]
    assert edges[0] == -top
    assert edges[-1] == top
    assert all(np.isfinite(edges))
    assert sum(x["histogram"]["counts"]) == 3
    json.dumps(x, allow_nan=False)


def test_narrow_range_many_bins() -> None:
    values = [1e16, 1e16 + 2, 1e16 + 4]
    x = column(profile_frame(pd.DataFrame({"f": values}), bins=50), "f")
    assert sum(x["histogram"]["counts"]) == 3
    assert len(x["histogram"]["edges"]) == 51


# --- categorical ------------------------------------------------------------------------------


def test_string_top_categories_and_other() -> None:
    values = ["b"] * 5 + ["d"] * 3 + ["a"] * 3 + ["c"] * 3 + ["e"] + [None] * 2
    for dtype in ("str", object):
        s = column(
            profile_frame(pd.DataFrame({"s": pd.Series(values, dtype=dtype)}), top_categories=3),
            "s",
        )
        assert s["kind"] == "categorical"
        assert s["type"] == "string"
        assert (s["count"], s["nulls"], s["distinct"]) == (15, 2, 5)
        assert list(s["counts"].items()) == [("b", 5), ("a", 3), ("c", 3)]
        assert s["other"] == 4


def test_many_distinct_values_break_ties_by_value() -> None:
    values = [f"id{i:05d}" for i in reversed(range(20_000))]
    values += ["zz", "zz"]
    s = column(profile_frame(pd.DataFrame({"s": values}), top_categories=4), "s")
    assert list(s["counts"].items()) == [("zz", 2), ("id00000", 1), ("id00001", 1), ("id00002", 1)]
    assert s["other"] == 20_002 - 5
    assert s["distinct"] == 20_001


def test_top_categories_zero_puts_everything_in_other() -> None:
    s = column(profile_frame(pd.DataFrame({"s": ["a", "b"]}), top_categories=0), "s")
    assert (s["counts"], s["other"], s["distinct"]) == ({}, 2, 2)


def test_mixed_object_values_are_counted_by_their_text() -> None:
    s = column(profile_frame(pd.DataFrame({"m": pd.Series(["1", 1, "x"], dtype=object)})), "m")
    assert s["counts"] == {"1": 2, "x": 1}


def test_boolean_profile() -> None:
    frame = pd.DataFrame({"b": pd.array([True, True, None, False, True], dtype="boolean")})
    assert column(profile_frame(frame), "b") == {
        "kind": "categorical",
        "type": "boolean",
        "count": 4,
        "nulls": 1,
        "distinct": 2,
        "counts": {"true": 3, "false": 1},
        "other": 0,
    }
    only_true = column(profile_frame(pd.DataFrame({"b": [True, True]})), "b")
    assert (only_true["distinct"], only_true["counts"]) == (1, {"true": 2, "false": 0})


# --- datetime ---------------------------------------------------------------------------------


def test_datetime_profile() -> None:
    frame = pd.DataFrame(
        {
            "d": pd.to_datetime(pd.Series(["2024-03-01 10:00", None, "2023-12-31 00:00"])),
            "tz": pd.to_datetime(
                pd.Series(["2024-01-01T00:00:00+00:00", "2024-06-01T12:30:00+00:00", None])
            ),
        }
    )
    profile = profile_frame(frame)
    assert column(profile, "d") == {
        "kind": "datetime",
        "type": "datetime",
        "count": 2,
        "nulls": 1,
        "min": "2023-12-31T00:00:00",
        "max": "2024-03-01T10:00:00",
    }
    assert column(profile, "tz")["max"] == "2024-06-01T12:30:00+00:00"


# --- all-null, JSON, arguments ----------------------------------------------------------------


def test_all_null_columns() -> None:
    frame = pd.DataFrame(
        {
            "f": [np.nan, np.nan],
            "i": pd.array([None, None], dtype="Int64"),
            "s": pd.Series([None, None], dtype="str"),
            "b": pd.array([None, None], dtype="boolean"),
            "d": pd.to_datetime(pd.Series([None, None])),
        }
    )
    profile = profile_frame(frame)
    f = column(profile, "f")
    assert (f["kind"], f["count"], f["nulls"]) == ("numeric", 0, 2)
    for stat in ("min", "max", "mean", "std", "quantiles", "histogram"):
        assert f[stat] is None
    assert column(profile, "i")["type"] == "integer"
    assert column(profile, "i")["min"] is None
    s = column(profile, "s")
    assert (s["kind"], s["count"], s["nulls"], s["distinct"], s["counts"], s["other"]) == (
        "categorical",
        0,
        2,
        0,
        {},
        0,
    )
    assert column(profile, "b")["counts"] == {"true": 0, "false": 0}
    d = column(profile, "d")
    assert (d["kind"], d["count"], d["min"], d["max"]) == ("datetime", 0, None, None)


def test_profile_is_plain_json() -> None:
    frame = pd.DataFrame(
        {
            "i": np.arange(50, dtype=np.int64),
            "f": np.where(np.arange(50) % 7 == 0, np.nan, np.arange(50) / 3),
            "f32": np.arange(50, dtype=np.float32),
            "s": pd.Series([f"v{i % 4}" for i in range(50)], dtype="str"),
            "b": np.arange(50) % 2 == 0,
            "d": pd.date_range("2024-01-01", periods=50, freq="h"),
            "empty": [None] * 50,
        }
    )
    profile = profile_frame(frame, bins=7)
    text = json.dumps(profile, allow_nan=False)
    assert json.loads(text) == profile
    assert list(column(profile, "i")["quantiles"]["probs"]) == list(QUANTILE_PROBS)


def test_empty_frame() -> None:
    assert profile_frame(pd.DataFrame({"a": pd.Series([], dtype=float)})) == {
        "rows": 0,
        "columns": {
            "a": {
                "kind": "numeric",
                "type": "float",
                "count": 0,
                "nulls": 0,
                "min": None,
                "max": None,
                "mean": None,
                "std": None,
                "quantiles": None,
                "histogram": None,
            }
        },
    }


@pytest.mark.parametrize("kwargs", [{"bins": 0}, {"top_categories": -1}])
def test_bad_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must"):
        profile_frame(pd.DataFrame({"a": [1]}), **kwargs)


def test_duplicate_names_are_refused() -> None:
    frame = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(ValueError, match="duplicate column name 'a'"):
        profile_frame(frame)


def test_profile_of_a_read_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("age,city,member\n30,Oslo,true\n,Bergen,false\n41,Oslo,true\n")
    frame = read_table(path, "csv")
    assert [c["type"] for c in infer_schema(frame)] == ["integer", "string", "boolean"]
    profile = profile_frame(frame)
    age = column(profile, "age")
    assert (age["count"], age["nulls"], age["min"], age["max"]) == (2, 1, 30, 41)
    assert column(profile, "city")["counts"] == {"Oslo": 2, "Bergen": 1}
    json.dumps(profile, allow_nan=False)
