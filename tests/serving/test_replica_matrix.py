"""The replica's numeric fast path: a plain matrix instead of a frame, only for models shown
at load to answer it exactly as they answer the frame."""

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from app.ml.serving_contract import frame_from_payload, matrix_from_payload, predict
from app.serving.replica import Loaded, takes_matrix

COLUMNS = ["a", "b", "c"]
SIGNATURE = {
    "inputs": [{"name": c, "type": "float", "nullable": False} for c in COLUMNS],
    "output": {"kind": "classification"},
}


def data() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 3)), columns=COLUMNS)
    return frame, (frame["a"] + frame["b"] > 0).to_numpy().astype(int)


def loaded(model: object, frame: pd.DataFrame) -> Loaded:
    sample = {"columns": COLUMNS, "rows": frame.head(50).to_numpy().tolist()}
    return Loaded(model, SIGNATURE, "m", 1, sample)


def test_a_numeric_model_takes_the_matrix_and_answers_the_same() -> None:
    frame, y = data()
    model = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())]).fit(frame, y)
    assert takes_matrix(loaded(model, frame))
    payload = {"rows": [{"a": 0.3, "b": -1.2, "c": 2.0}]}
    matrix = matrix_from_payload(payload, SIGNATURE)
    assert matrix is not None and matrix.shape == (1, 3)
    assert predict(model, matrix, SIGNATURE) == predict(
        model, frame_from_payload(payload, SIGNATURE), SIGNATURE
    )


def test_a_model_that_picks_columns_by_name_keeps_frames() -> None:
    frame, y = data()
    by_name = ColumnTransformer([("scaled", StandardScaler(), ["b", "a"])])
    model = Pipeline([("pick", by_name), ("clf", LogisticRegression())]).fit(frame, y)
    assert not takes_matrix(loaded(model, frame))


def test_text_columns_or_no_background_keep_frames() -> None:
    signature = {"inputs": [{"name": "city", "type": "string", "nullable": False}]}
    assert matrix_from_payload({"rows": [{"city": "Paris"}]}, signature) is None
    frame, y = data()
    model = LogisticRegression().fit(frame, y)
    assert not takes_matrix(Loaded(model, SIGNATURE, "m", 1, None))
