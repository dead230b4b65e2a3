import numpy as np
import pandas as pd
import pytest

from app.ml.serving_contract import InputError, check_payload, frame_from_payload

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
