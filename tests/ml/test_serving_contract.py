from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.ml.serving_contract import (
    InputError,
    check_payload,
    features_from_payload,
    frame_from_payload,
)

SIGNATURE = {
    "inputs": [
        {"name": "age", "type": "integer", "nullable": False},
        {"name": "income", "type": "float", "nullable": True},
        {"name": "city", "type": "string", "nullable": False},
        {"name": "vip", "type": "boolean", "nullable": True},
    ],
    "output": {"kind": "classification", "classes": [0, 1]},
}


def test_rows_and_dataframe_split_give_the_same_frame() -> None:
    rows = {
        "rows": [
            {"city": "Nice", "age": 30, "income": 1.5, "vip": True},
            {"age": 40, "city": "Lyon"},
        ]
    }
    split = {
        "dataframe_split": {
            "columns": ["age", "income", "city", "vip"],
            "data": [[30, 1.5, "Nice", True], [40, None, "Lyon", None]],
        }
    }
    a, b = frame_from_payload(rows, SIGNATURE), frame_from_payload(split, SIGNATURE)
    assert list(a.columns) == ["age", "income", "city", "vip"]
    pd.testing.assert_frame_equal(a, b)
    assert a["age"].dtype.kind == "i" and a["income"].dtype.kind == "f"
    # strings stay objects with None for missing, as the model saw them in training
    assert a["city"].dtype == object and b["vip"].tolist()[1] is pd.NA
    split_missing = {"dataframe_split": {"columns": ["age", "city"], "data": [[1, None]]}}
    loose = {**SIGNATURE, "inputs": [{**c, "nullable": True} for c in SIGNATURE["inputs"]]}
    assert frame_from_payload(split_missing, loose)["city"].tolist() == [None]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"rows": [{"age": "x", "city": "a"}]}, "column 'age' expects integer"),
        ({"rows": [{"age": 1.5, "city": "a"}]}, "column 'age' expects integer"),
        ({"rows": [{"age": 1, "city": 3}]}, "column 'city' expects string"),
        ({"rows": [{"age": 1}]}, "missing required column 'city'"),
        ({"rows": [{"age": 1, "city": "a", "zip": 1}]}, "unknown column(s) ['zip']"),
        ({"rows": [{"age": 1, "city": "a"}, {"age": None, "city": "b"}]}, "row 1 has no value"),
        ({"rows": [{"age": 1, "city": "a"}, {"city": "b"}]}, "row 1 has no value"),
        ({"rows": []}, "at least one row"),
        ({"rows": "nope"}, "list of objects"),
        ([1, 2], "JSON object"),
        ({"dataframe_split": {"columns": ["age"], "data": [[1, 2]]}}, "has 2 values for 1 columns"),
        ({"rows": [{"age": 1, "city": "a", "vip": "yes"}]}, "column 'vip' expects boolean"),
    ],
)
def test_bad_input_names_the_problem(payload: object, fragment: str) -> None:
    """The gateway's frame-free check and the replica's frame agree on every refusal."""
    for check in (check_payload, frame_from_payload):
        with pytest.raises(InputError) as caught:
            check(payload, SIGNATURE)
        assert fragment in caught.value.message


def test_one_probability_call_gives_the_same_predictions_as_predict() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from app.ml.serving_contract import predict

    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(300, 4)), columns=list("abcd"))
    labels = np.where(frame["a"] + rng.normal(0, 1, 300) > 0, "yes", "no")
    signature = {"output": {"kind": "classification"}}
    for model in (
        make_pipeline(StandardScaler(), LogisticRegression()),
        HistGradientBoostingClassifier(max_iter=20),
        SVC(probability=True, random_state=0),  # its predict is not the argmax: asked apart
    ):
        model.fit(frame, labels)
        result = predict(model, frame, signature)
        assert result["predictions"] == model.predict(frame).tolist()
        assert result["classes"] == ["no", "yes"] and len(result["probabilities"]) == 300


def test_an_all_float_signature_converts_every_shape_to_the_same_table() -> None:
    """Float-only signatures take one conversion for the whole table: rows with missing keys,
    integers, None and NaN, and dataframe_split in any column order or with columns left out
    give the same matrix and frame as the per-column path."""
    signature = {
        "inputs": [{"name": n, "type": "float", "nullable": True} for n in ("a", "b", "c")],
        "output": {"kind": "regression"},
    }
    expected = np.array([[1.0, np.nan, 3.5], [np.nan, 2.0, np.nan]])

    def split(columns: list[str], data: list[list[float | None]]) -> dict[str, Any]:
        return {"dataframe_split": {"columns": columns, "data": data}}

    payloads = [
        {"rows": [{"a": 1, "c": 3.5, "b": None}, {"b": 2, "c": float("nan")}]},
        split(["c", "a", "b"], [[3.5, 1, None], [None, None, 2]]),
        split(["a", "b", "c"], [[1, None, 3.5], [None, 2, None]]),
        split(["b", "a"], [[None, 1], [2, None]]),
    ]
    for payload in payloads[:3]:
        matrix = features_from_payload(payload, signature, matrix=True)
        assert isinstance(matrix, np.ndarray) and matrix.dtype == np.float64
        np.testing.assert_array_equal(matrix, expected)
        frame = frame_from_payload(payload, signature)
        assert list(frame.columns) == ["a", "b", "c"] and (frame.dtypes == np.float64).all()
        np.testing.assert_array_equal(frame.to_numpy(), expected)
    partial = features_from_payload(payloads[3], signature, matrix=True)
    np.testing.assert_array_equal(partial, [[1.0, np.nan, np.nan], [np.nan, 2.0, np.nan]])
    with pytest.raises(InputError, match="column 'a' expects float"):
        features_from_payload({"rows": [{"a": True}]}, signature, matrix=True)


def test_a_datetime_column_takes_text_timestamps_and_numpy_times_as_the_same_text() -> None:
    # rows read from a table (importance, background samples) carry Timestamps; JSON sends text
    signature = {
        "inputs": [
            {"name": "ts", "type": "datetime", "nullable": True},
            {"name": "age", "type": "integer", "nullable": False},
        ],
        "output": {"kind": "regression"},
    }
    data = [
        [pd.Timestamp("2026-01-01 18:00:00"), 1],
        [np.datetime64("2026-01-02T06:30:00"), 2],
        ["2026-01-03T00:00:00", 3],
        [pd.NaT, 4],
        [np.datetime64("NaT"), 5],
    ]
    frame = frame_from_payload(
        {"dataframe_split": {"columns": ["ts", "age"], "data": data}}, signature
    )
    assert frame["ts"].tolist() == [
        "2026-01-01T18:00:00",
        "2026-01-02T06:30:00",
        "2026-01-03T00:00:00",
        None,
        None,
    ]
    required = {**signature, "inputs": [{**signature["inputs"][0], "nullable": False}]}
    with pytest.raises(InputError, match="row 0 has no value"):
        check_payload({"rows": [{"ts": pd.NaT}]}, required)
    with pytest.raises(InputError, match="column 'ts' expects datetime"):
        check_payload({"rows": [{"ts": 17}]}, required)
