import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import f1_score, precision_score, recall_score
from sklearn.svm import SVC

from app.ml.evaluation import evaluate, gate, task_of
from app.ml.training import TrainingError


def classification(classes: int, rows: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(classes)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    labels = np.digitize(a + 0.3 * b, np.linspace(-0.6, 0.6, classes - 1))
    return pd.DataFrame({"a": a, "b": b, "y": np.array(list("abcdefgh"))[labels]})


def fit(frame: pd.DataFrame, model: Any) -> Any:
    return model.fit(frame[["a", "b"]], frame["y"])


def finite_floats(metrics: dict[str, float]) -> bool:
    return all(type(v) is float and math.isfinite(v) for v in metrics.values())


def test_binary_metrics_use_the_second_class_as_positive() -> None:
    frame = classification(2)
    model = fit(frame, LogisticRegression())
    metrics = evaluate(model, frame, "y")
    assert set(metrics) == {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"}
    assert finite_floats(metrics)
    predicted = model.predict(frame[["a", "b"]])
    assert metrics["precision"] == pytest.approx(
        precision_score(frame["y"], predicted, pos_label="b")
    )
    assert metrics["recall"] == pytest.approx(recall_score(frame["y"], predicted, pos_label="b"))
    assert metrics["roc_auc"] > 0.9 and task_of(model) == "classification"


def test_multiclass_metrics_are_macro_averaged() -> None:
    frame = classification(3)
    model = fit(frame, LogisticRegression())
    metrics = evaluate(model, frame, "y")
    assert {"accuracy", "f1", "roc_auc", "log_loss"} <= set(metrics) and finite_floats(metrics)
    predicted = model.predict(frame[["a", "b"]])
    assert metrics["f1"] == pytest.approx(f1_score(frame["y"], predicted, average="macro"))


def test_probability_metrics_are_omitted_without_predict_proba() -> None:
    frame = classification(2)
    metrics = evaluate(fit(frame, SVC()), frame, "y")
    assert "roc_auc" not in metrics and "log_loss" not in metrics
    assert {"accuracy", "precision", "recall", "f1"} <= set(metrics)


def test_roc_auc_is_omitted_when_one_class_is_present() -> None:
    frame = classification(2)
    model = fit(frame, LogisticRegression())
    only_b = frame[frame["y"] == "b"]
    metrics = evaluate(model, only_b, "y")
    assert "roc_auc" not in metrics and "accuracy" in metrics and finite_floats(metrics)


def test_regression_metrics() -> None:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"a": rng.normal(size=50), "b": rng.normal(size=50)})
    frame["y"] = 2 * frame["a"] + rng.normal(scale=0.1, size=50)
    model = LinearRegression().fit(frame[["a", "b"]], frame["y"])
    metrics = evaluate(model, frame, "y")
    assert set(metrics) == {"rmse", "mae", "r2"} and finite_floats(metrics)
    assert metrics["r2"] > 0.95 and task_of(model) == "regression"
    assert "r2" not in evaluate(model, frame.head(1), "y")  # undefined, omitted, never NaN


def test_rows_without_a_target_are_skipped_and_bad_input_is_a_training_error() -> None:
    frame = classification(2)
    model = fit(frame, LogisticRegression())
    gappy = frame.astype({"y": object})
    gappy.loc[:9, "y"] = None
    assert finite_floats(evaluate(model, gappy, "y"))
    with pytest.raises(TrainingError, match="could not predict"):
        evaluate(model, frame.drop(columns="b"), "y")
    with pytest.raises(TrainingError, match="not in the evaluation data"):
        evaluate(model, frame, "label")


def test_gate_thresholds() -> None:
    metrics = {"accuracy": 0.9, "log_loss": 0.4}
    ok = gate(
        metrics,
        thresholds={"min": {"accuracy": 0.8}, "max": {"log_loss": 0.5}},
        champion=None,
        primary_metric=None,
        tolerance=0.0,
    )
    assert ok["verdict"] == "blessed" and ok["reasons"] == []
    assert ok["checks"][0] == {
        "metric": "accuracy", "kind": "min", "threshold": 0.8, "value": 0.9, "passed": True
    }  # fmt: skip
    bad = gate(
        metrics,
        thresholds={"min": {"accuracy": 0.95}, "max": {"log_loss": 0.3}},
        champion=None,
        primary_metric=None,
        tolerance=0.0,
    )
    assert bad["verdict"] == "rejected"
    assert "below the minimum" in bad["reasons"][0] and "above the maximum" in bad["reasons"][1]


def test_gate_missing_metric_fails() -> None:
    result = gate(
        {"accuracy": 0.9},
        thresholds={"min": {"roc_auc": 0.7}},
        champion=None,
        primary_metric=None,
        tolerance=0.0,
    )
    assert result["verdict"] == "rejected"
    assert "roc_auc was not computed" in result["reasons"][0]
    assert result["checks"][0]["value"] is None and not result["checks"][0]["passed"]


def test_gate_champion_direction_higher_for_accuracy() -> None:
    kwargs: dict[str, Any] = {"thresholds": {}, "primary_metric": "accuracy", "tolerance": 0.01}
    better = gate({"accuracy": 0.86}, champion={"accuracy": 0.84}, **kwargs)
    assert better["verdict"] == "blessed"
    assert better["checks"] == [
        {"metric": "accuracy", "kind": "champion", "champion": 0.84, "value": 0.86,
         "tolerance": 0.01, "passed": True}
    ]  # fmt: skip
    assert gate({"accuracy": 0.845}, champion={"accuracy": 0.84}, **kwargs)["verdict"] == (
        "rejected"
    )  # better, but not by the tolerance
    assert gate({"accuracy": 0.80}, champion={"accuracy": 0.84}, **kwargs)["verdict"] == (
        "rejected"
    )


def test_gate_champion_direction_lower_for_log_loss() -> None:
    kwargs: dict[str, Any] = {"thresholds": {}, "primary_metric": "log_loss", "tolerance": 0.0}
    assert gate({"log_loss": 0.3}, champion={"log_loss": 0.4}, **kwargs)["verdict"] == "blessed"
    worse = gate({"log_loss": 0.5}, champion={"log_loss": 0.4}, **kwargs)
    assert worse["verdict"] == "rejected" and "lower is better" in worse["reasons"][0]


def test_gate_default_primary_metric() -> None:
    both = gate(
        {"accuracy": 0.7, "roc_auc": 0.9},
        thresholds={},
        champion={"accuracy": 0.8, "roc_auc": 0.85},
        primary_metric=None,
        tolerance=0.0,
    )
    assert both["checks"][0]["metric"] == "roc_auc" and both["verdict"] == "blessed"
    no_auc = gate(
        {"accuracy": 0.7, "roc_auc": 0.9},
        thresholds={},
        champion={"accuracy": 0.8},
        primary_metric=None,
        tolerance=0.0,
    )
    assert no_auc["checks"][0]["metric"] == "accuracy" and no_auc["verdict"] == "rejected"
    reg = gate(
        {"rmse": 1.0, "r2": 0.5},
        thresholds={},
        champion={"rmse": 1.2, "r2": 0.6},
        primary_metric=None,
        tolerance=0.0,
    )
    assert reg["checks"][0]["metric"] == "rmse" and reg["verdict"] == "blessed"


def test_gate_champion_missing_the_primary_metric_rejects() -> None:
    result = gate(
        {"roc_auc": 0.9},
        thresholds={},
        champion={"accuracy": 0.8},
        primary_metric="roc_auc",
        tolerance=0.0,
    )
    assert result["verdict"] == "rejected" and "champion" in result["reasons"][0]


def test_gate_refuses_unknown_kinds_and_metrics() -> None:
    with pytest.raises(TrainingError, match="threshold kind"):
        gate({}, thresholds={"minimum": {"accuracy": 1}}, champion=None,
             primary_metric=None, tolerance=0)  # fmt: skip
    with pytest.raises(TrainingError, match="no known direction"):
        gate({"score": 1.0}, thresholds={}, champion={"score": 0.5},
             primary_metric="score", tolerance=0)  # fmt: skip
