"""The SHAP wrapper on real fitted models: explainer choice, additivity, input-column mapping."""

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, PolynomialFeatures, StandardScaler

from app.ml.explain import ExplainError, ModelExplainer, attribution_drift, mean_abs, ndcg
from tests.registry.helpers import churn_frame, fit_pipeline

FEATURES = ["age", "income", "city"]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return churn_frame(240, seed=3)


def inputs(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[FEATURES]


def prep() -> ColumnTransformer:
    return ColumnTransformer(
        [("num", StandardScaler(), ["age", "income"]), ("cat", OneHotEncoder(), ["city"])]
    )


def assert_additive(result) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_allclose(
        result.values.sum(axis=1) + result.base_values, result.outputs, atol=1e-9
    )
    assert result.additive and result.max_error <= result.tolerance


def test_linear_pipeline_sums_one_hot_columns_back_to_their_source(frame: pd.DataFrame) -> None:
    model = fit_pipeline(frame)
    explainer = ModelExplainer(model, FEATURES, inputs(frame).head(100))
    rows = inputs(frame).tail(7)
    result = explainer.explain(rows)
    assert explainer.kind == "linear" and result.output_space == "log_odds"
    assert result.features == FEATURES and result.classes == [0, 1]
    assert_additive(result)
    np.testing.assert_allclose(result.outputs[:, 1], model.decision_function(rows))
    # by hand: coef * (x - background mean), the three one-hot columns summed into "city"
    encoded = model[:-1].transform(rows)
    mean = model[:-1].transform(inputs(frame).head(100)).mean(axis=0)
    contribution = (encoded - mean) * model[-1].coef_[0]
    np.testing.assert_allclose(result.values[:, 2, 1], contribution[:, 2:].sum(axis=1))
    np.testing.assert_allclose(result.values[:, 0, 1], contribution[:, 0])
    # the negative class mirrors the positive one in log-odds
    np.testing.assert_allclose(result.values[:, :, 0], -result.values[:, :, 1])


def test_tree_ensemble_matches_tree_shap_and_adds_up_to_probabilities(
    frame: pd.DataFrame,
) -> None:
    import shap

    model = Pipeline([("prep", prep()), ("rf", RandomForestClassifier(30, random_state=0))])
    model.fit(inputs(frame), frame["churned"])
    result = ModelExplainer(model, FEATURES, None).explain(inputs(frame).head(10))
    assert result.explainer == "tree" and result.output_space == "probability"
    assert_additive(result)
    np.testing.assert_allclose(result.outputs, model.predict_proba(inputs(frame).head(10)))
    direct = shap.TreeExplainer(model[-1]).shap_values(model[:-1].transform(inputs(frame).head(10)))
    np.testing.assert_allclose(result.values[:, 2, :], direct[:, 2:, :].sum(axis=1))
    ranked = [item["feature"] for item in mean_abs(result)]
    assert ranked[0] == "age"


def test_plain_regressor_on_named_columns(frame: pd.DataFrame) -> None:
    numeric = frame[["age", "income"]]
    model = RandomForestRegressor(20, random_state=0).fit(numeric, frame["income"] / 1000)
    result = ModelExplainer(model, FEATURES, None).explain(inputs(frame).head(5))
    assert result.classes is None and result.output_space == "raw"
    assert_additive(result)
    assert np.all(result.values[:, 2, 0] == 0)  # city is in the signature, not in the model
    assert np.abs(result.values[:, 1, 0]).sum() > np.abs(result.values[:, 0, 0]).sum()


def test_other_models_take_the_kernel_path_within_the_budget(frame: pd.DataFrame) -> None:
    model = Pipeline([("prep", prep()), ("knn", KNeighborsClassifier(7))])
    model.fit(inputs(frame), frame["churned"])
    explainer = ModelExplainer(model, FEATURES, inputs(frame).head(100))
    result = explainer.explain(inputs(frame).tail(4))
    assert explainer.kind == "kernel" and result.output_space == "probability"
    assert result.background_rows == 50 and result.max_evals is not None
    assert_additive(result)
    assert not result.approximate  # 3 features: every coalition fits in the budget
    np.testing.assert_allclose(result.outputs, model.predict_proba(inputs(frame).tail(4)))
    with pytest.raises(ExplainError) as small:
        explainer.explain(inputs(frame).head(1), max_evals=5)
    assert small.value.code == "budget_too_small" and "7" in small.value.message
    with pytest.raises(ExplainError) as big:
        explainer.explain(inputs(frame), max_work=10_000)
    assert big.value.code == "budget_exceeded"


def test_interactions_fall_back_to_the_kernel_explainer(frame: pd.DataFrame) -> None:
    numeric = ["age", "income"]
    model = Pipeline(
        [("poly", PolynomialFeatures(2)), ("scale", StandardScaler()), ("lr", LogisticRegression())]
    ).fit(frame[numeric], frame["churned"])
    explainer = ModelExplainer(model, numeric, frame[numeric].head(60))
    assert explainer.kind == "kernel"
    assert any("not traceable to inputs" in note for note in explainer.notes)
    assert_additive(explainer.explain(frame[numeric].head(3)))


def test_a_clusterer_is_refused(frame: pd.DataFrame) -> None:
    model = KMeans(2, n_init=1, random_state=0).fit(frame[["age", "income"]])
    with pytest.raises(ExplainError) as refused:
        ModelExplainer(model, ["age", "income"], None)
    assert refused.value.code == "unsupported_model" and "KMeans" in refused.value.message


def test_ndcg_and_attribution_drift() -> None:
    reference = {"a": 0.5, "b": 0.3, "c": 0.1, "d": 0.05}
    assert ndcg(reference, {k: v * 10 for k, v in reference.items()}) == pytest.approx(1.0)
    swapped = {"a": 0.3, "b": 0.5, "c": 0.1, "d": 0.05}
    reversed_ = {"a": 0.01, "b": 0.02, "c": 0.3, "d": 0.4}
    assert 1.0 > ndcg(reference, swapped) > ndcg(reference, reversed_)
    assert ndcg(reference, reversed_, k=2) < ndcg(reference, reversed_)
    drift = attribution_drift(reference, reversed_, threshold=0.9)
    assert drift["drifted"] and drift["rank_changes"][0] == {
        "feature": "a",
        "reference_rank": 1,
        "candidate_rank": 4,
    }
    assert not attribution_drift(reference, swapped, threshold=0.8)["drifted"]
