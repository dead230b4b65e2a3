"""The replica's numeric fast path: a plain matrix instead of a frame, only for models shown
at load to answer it exactly as they answer the frame."""

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from starlette.testclient import TestClient

from app.ml.serving_contract import frame_from_payload, matrix_from_payload, predict
from app.serving.replica import Loaded, build_app, takes_matrix

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


def test_the_replicas_predict_route_answers_and_refuses_over_asgi() -> None:
    """/predict is bare ASGI in front of the Starlette app: its answers and refusals, and the
    routes behind it, through the app as uvicorn drives it."""
    frame, y = data()
    model = LogisticRegression().fit(frame, y)
    replica = loaded(model, frame)
    replica.takes_matrix = takes_matrix(replica)
    row = {"a": 0.3, "b": -1.2, "c": 2.0}
    with TestClient(build_app(replica)) as http:
        answer = http.post("/predict", json={"rows": [row]})
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        body = answer.json()
        assert body["predictions"] == model.predict(pd.DataFrame([row])).tolist()
        assert body["model_latency_ms"] > 0
        wrong = http.post("/predict", json={"rows": [{"a": "x", "b": 1, "c": 1}]})
        assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "invalid_input"
        broken = http.post("/predict", content=b"{nope")
        assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
        assert (
            http.post("/predict", json={"rows": [{"a": None, "b": 1, "c": 1}]}).status_code == 422
        )
        assert http.get("/predict").status_code == 405
        assert http.get("/health").json() == {"status": "ready"}
