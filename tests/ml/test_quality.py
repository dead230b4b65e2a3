import numpy as np
import pytest
from sklearn import metrics as skm

from app.ml import quality


def test_binary_classification_matches_sklearn_on_the_positive_class() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.clip(labels * 0.3 + rng.random(500) * 0.7, 0, 1)
    predictions = (scores > 0.5).astype(int)
    probabilities = np.column_stack([1 - scores, scores]).tolist()
    result = quality.classification(labels.tolist(), predictions.tolist(), probabilities, [0, 1])
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions), abs=1e-6)
    assert result["precision"] == pytest.approx(skm.precision_score(labels, predictions), abs=1e-6)
    assert result["recall"] == pytest.approx(skm.recall_score(labels, predictions), abs=1e-6)
    assert result["f1"] == pytest.approx(skm.f1_score(labels, predictions), abs=1e-6)
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-6)


def test_labels_as_strings_match_integer_predictions_and_one_class_has_no_auc() -> None:
    result = quality.classification(["1", "1", "1"], [1, 0, 1], [[0.2, 0.8]] * 3, [0, 1])
    assert result["accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert result["roc_auc"] is None  # undefined with one class among the labels


def test_regression_metrics() -> None:
    result = quality.regression([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.5, 4.0])
    assert result["mae"] == pytest.approx(0.25)
    assert result["rmse"] == pytest.approx((0.5 / 4) ** 0.5, abs=1e-6)
    assert result["r2"] == pytest.approx(skm.r2_score([1, 2, 3, 4], [1.5, 2, 2.5, 4]))


def test_fairness_parity_equalized_odds_and_four_fifths() -> None:
    groups = ["a"] * 100 + ["b"] * 100 + ["c"] * 5
    # a selected 50%, b selected 30% -> ratio 0.6 fails the four-fifths rule
    predictions = [1] * 50 + [0] * 50 + [1] * 30 + [0] * 70 + [1] * 5
    labels = [1] * 40 + [0] * 10 + [1] * 10 + [0] * 40 + [1] * 20 + [0] * 10 + [1] * 20 + [0] * 50
    labels += [None] * 5
    result = quality.fairness(groups, predictions, labels, positive=1, min_group_size=30)
    by_group = {g["group"]: g for g in result["groups"]}
    assert by_group["a"]["selection_rate"] == 0.5 and by_group["b"]["selection_rate"] == 0.3
    assert by_group["a"]["tpr"] == 0.8 and by_group["a"]["fpr"] == 0.2
    assert by_group["b"]["tpr"] == 0.5 and by_group["b"]["fpr"] == pytest.approx(10 / 60, abs=1e-6)
    assert by_group["c"]["labelled"] == 0 and by_group["c"]["tpr"] is None
    assert result["judged_groups"] == ["a", "b"]  # c is too small to judge
    assert result["demographic_parity_difference"] == pytest.approx(0.2)
    assert result["demographic_parity_ratio"] == pytest.approx(0.6)
    assert result["equalized_odds_difference"] == pytest.approx(0.3)
    assert result["four_fifths_rule_passed"] is False and result["verdict"] == "failed"


def test_no_fairness_verdict_on_small_groups() -> None:
    result = quality.fairness(["a", "b"], [1, 0], [1, 0], positive=1, min_group_size=30)
    assert result["verdict"] == "insufficient_data" and result["demographic_parity_ratio"] is None
