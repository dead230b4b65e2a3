import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
)
from sklearn.linear_model import LinearRegression, LogisticRegression, SGDClassifier
from sklearn.pipeline import Pipeline

from app.ml.model_files import inspect_file, save_model
from app.ml.tabular import read_table
from app.ml.training import (
    TrainingError,
    build_estimator,
    build_pipeline,
    capabilities,
    continue_training,
    fit_builtin,
    fit_entrypoint,
    is_classifier_target,
    split,
    supports,
    without_columns,
)

ALLOWED = [
    "sklearn.linear_model.LogisticRegression",
    "sklearn.linear_model.LinearRegression",
    "sklearn.ensemble.RandomForestClassifier",
    "sklearn.ensemble.HistGradientBoostingClassifier",
]


def binary_frame(rows: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    return pd.DataFrame({"a": a, "b": b, "y": np.where(a + 0.5 * b > 0, "yes", "no")})


def mixed_frame(rows: int = 150) -> pd.DataFrame:
    """Numeric, nullable integer, text, nullable boolean and datetime columns with gaps."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=rows)
    city = rng.choice(["paris", "rome", "oslo"], rows).astype(object)
    city[::7] = None
    count = pd.array(rng.integers(0, 5, rows), dtype="Int64")
    count[::5] = pd.NA
    flag = pd.array(rng.random(rows) > 0.5, dtype="boolean")
    flag[::6] = pd.NA
    a_gappy = a.copy()
    a_gappy[::9] = np.nan
    return pd.DataFrame(
        {
            "a": a_gappy,
            "count": count,
            "city": pd.Series(city, dtype="str"),
            "flag": flag,
            "when": pd.date_range("2024-01-01", periods=rows, freq="D"),
            "y": np.where((a > 0) | (city == "rome"), 1, 0),
        }
    )


def test_split_is_deterministic_and_stratified() -> None:
    frame = binary_frame()
    train1, test1 = split(frame, target="y", test_size=0.25, seed=3, stratify=True)
    train2, test2 = split(frame, target="y", test_size=0.25, seed=3, stratify=True)
    assert list(test1.index) == list(test2.index) and list(train1.index) == list(train2.index)
    assert len(test1) == 30 and len(train1) == 90
    overall = (frame["y"] == "yes").mean()
    assert abs((test1["y"] == "yes").mean() - overall) < 0.05
    _, other = split(frame, target="y", test_size=0.25, seed=4, stratify=True)
    assert list(other.index) != list(test1.index)


def test_split_falls_back_when_a_class_is_too_rare_and_drops_missing_targets() -> None:
    frame = binary_frame(40)
    frame.loc[0, "y"] = "rare"  # one row only: stratifying would fail
    frame.loc[1, "y"] = None
    train, test = split(frame, target="y", test_size=0.25, seed=0, stratify=True)
    assert len(train) + len(test) == 39
    assert 1 not in train.index and 1 not in test.index


@pytest.mark.parametrize("size", [0, 1, 1.5])
def test_split_refuses_bad_test_size(size: float) -> None:
    with pytest.raises(TrainingError, match="test_size"):
        split(binary_frame(), target="y", test_size=size, seed=0, stratify=False)


def test_split_names_a_missing_target() -> None:
    with pytest.raises(TrainingError, match="'label' is not in the dataset"):
        split(binary_frame(), target="label", test_size=0.2, seed=0, stratify=False)


def test_excluded_columns_are_dropped_and_unknown_ones_named() -> None:
    frame = binary_frame()
    kept = without_columns(frame, ["b"], target="y")
    assert "b" not in kept.columns and "b" in frame.columns
    assert without_columns(frame, [], target="y") is frame
    with pytest.raises(TrainingError, match=r"'postcode' not in the dataset; columns: 'a', 'b'"):
        without_columns(frame, ["b", "postcode"], target="y")
    with pytest.raises(TrainingError, match="names the target 'y'"):
        without_columns(frame, ["y"], target="y")


def test_is_classifier_target() -> None:
    assert is_classifier_target(pd.Series(["a", "b"], dtype="str"))
    assert is_classifier_target(pd.Series([True, False]))
    assert is_classifier_target(pd.Series([0, 1, 1, 2]))
    assert is_classifier_target(pd.Series(pd.array([0, 1, None], dtype="Int64")))
    assert not is_classifier_target(pd.Series(range(100)))
    assert not is_classifier_target(pd.Series([0.5, 1.5, 2.0]))


def test_estimator_outside_the_allowlist_is_refused_before_import() -> None:
    with pytest.raises(TrainingError, match="not allowed"):
        build_estimator("os.system", {}, ALLOWED)
    with pytest.raises(TrainingError, match="not allowed"):
        build_estimator("sklearn.svm.SVC", {}, ALLOWED)


def test_unknown_hyperparameter_is_named() -> None:
    with pytest.raises(TrainingError, match=r"unknown hyperparameter 'n_trees'.*n_estimators"):
        build_estimator("sklearn.ensemble.RandomForestClassifier", {"n_trees": 5}, ALLOWED)


def test_bad_hyperparameter_value_is_named() -> None:
    with pytest.raises(TrainingError, match="'n_estimators' parameter"):
        build_estimator("sklearn.ensemble.RandomForestClassifier", {"n_estimators": -1}, ALLOWED)


def test_build_estimator_sets_hyperparameters() -> None:
    model = build_estimator("sklearn.linear_model.LogisticRegression", {"C": 0.3}, ALLOWED)
    assert isinstance(model, LogisticRegression) and model.C == 0.3


def test_fit_builtin_binary() -> None:
    train, test = split(binary_frame(), target="y", test_size=0.2, seed=0, stratify=True)
    model = fit_builtin(
        train,
        target="y",
        estimator="sklearn.linear_model.LogisticRegression",
        hyperparameters={},
        preprocessing="auto",
        allowed=ALLOWED,
    )
    assert isinstance(model, Pipeline)
    assert list(model.classes_) == ["no", "yes"]
    assert (model.predict(test.drop(columns="y")) == test["y"].to_numpy()).mean() > 0.85


def test_fit_builtin_multiclass_and_regression() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(150, 2))
    multi = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": np.digitize(x[:, 0], [-0.5, 0.5])})
    model = fit_builtin(
        multi,
        target="y",
        estimator="sklearn.ensemble.RandomForestClassifier",
        hyperparameters={"n_estimators": 10, "random_state": 0},
        preprocessing="auto",
        allowed=ALLOWED,
    )
    assert list(model.classes_) == [0, 1, 2]
    reg = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": 3 * x[:, 0] - x[:, 1]})
    fitted = fit_builtin(
        reg,
        target="y",
        estimator="sklearn.linear_model.LinearRegression",
        hyperparameters={},
        preprocessing="none",
        allowed=ALLOWED,
    )
    assert isinstance(fitted, LinearRegression)
    assert fitted.score(reg[["a", "b"]], reg["y"]) > 0.99


def test_auto_preprocessing_handles_categories_gaps_and_drops_datetimes(tmp_path: Path) -> None:
    frame = mixed_frame()
    notes: list[str] = []
    model = fit_builtin(
        frame,
        target="y",
        estimator="sklearn.ensemble.HistGradientBoostingClassifier",
        hyperparameters={"max_iter": 20},
        preprocessing="auto",
        allowed=ALLOWED,
        notes=notes,
    )
    assert any("'when'" in note for note in notes)
    unseen = frame.drop(columns="y").head(3).assign(city=["tokyo", None, "rome"])
    assert len(model.predict(unseen)) == 3
    # Only library types go in, so the registry accepts the saved file.
    save_model(model, tmp_path / "m.skops")
    assert inspect_file(tmp_path / "m.skops").types


def test_auto_preprocessing_on_a_table_read_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    lines = ["n,i,s,b,y"] + [
        f"{i % 7 if i % 5 else ''},{i if i % 4 else ''},{'abc'[i % 3] if i % 6 else ''},"
        f"{['true', 'false', ''][i % 3]},{'pos' if i % 2 else 'neg'}"
        for i in range(60)
    ]
    path.write_text("\n".join(lines) + "\n")
    frame = read_table(path, "csv")
    assert str(frame["b"].dtype) == "boolean" and str(frame["i"].dtype) == "Int64"
    model = fit_builtin(
        frame,
        target="y",
        estimator="sklearn.linear_model.LogisticRegression",
        hyperparameters={},
        preprocessing="auto",
        allowed=ALLOWED,
    )
    assert set(model.predict(frame.drop(columns="y"))) <= {"pos", "neg"}


def test_preprocessing_none_on_text_is_a_training_error_with_a_hint() -> None:
    with pytest.raises(TrainingError, match="try 'auto'"):
        fit_builtin(
            mixed_frame().drop(columns=["when"]),
            target="y",
            estimator="sklearn.linear_model.LogisticRegression",
            hyperparameters={},
            preprocessing="none",
            allowed=ALLOWED,
        )


def test_build_pipeline_refuses_a_frame_without_features() -> None:
    with pytest.raises(TrainingError, match="no usable feature"):
        build_pipeline(
            LogisticRegression(), pd.DataFrame({"t": pd.date_range("2024", periods=3)}), "auto"
        )


def test_fit_entrypoint_accepts_a_fitted_model_and_refuses_others() -> None:
    frame = binary_frame()

    def good(train: pd.DataFrame, params: dict[str, Any]) -> Any:
        return LogisticRegression(C=params["C"]).fit(train[["a", "b"]], train["y"])

    model = fit_entrypoint(frame, good, {"C": 2.0})
    assert model.C == 2.0
    with pytest.raises(TrainingError, match="unfitted LogisticRegression"):
        fit_entrypoint(frame, lambda train, params: LogisticRegression(), {})
    with pytest.raises(TrainingError, match=r"has no fit\(\) or predict\(\)"):
        fit_entrypoint(frame, lambda train, params: {"weights": [1, 2]}, {})


def test_supports() -> None:
    assert supports(RandomForestClassifier()) == {"warm_start": True, "partial_fit": False}
    assert supports(Pipeline([("m", SGDClassifier())])) == {"warm_start": True, "partial_fit": True}
    assert supports(LinearRegression()) == {"warm_start": False, "partial_fit": False}


CONTINUABLE = [
    "sklearn.ensemble.RandomForestClassifier",
    "sklearn.ensemble.HistGradientBoostingRegressor",
    "sklearn.linear_model.LogisticRegression",
    "sklearn.linear_model.LinearRegression",
    "sklearn.linear_model.SGDClassifier",
    "sklearn.naive_bayes.GaussianNB",
    "sklearn.neighbors.KNeighborsClassifier",
]


def fitted(estimator: Any, frame: pd.DataFrame) -> Pipeline:
    """The shape retrains see: auto preprocessing (with a text column) around the estimator."""
    features = frame.drop(columns="y")
    pipeline: Pipeline = build_pipeline(estimator, features, "auto")
    return pipeline.fit(features, frame["y"].to_numpy())


def with_city(rows: int, seed: int) -> pd.DataFrame:
    frame = binary_frame(rows, seed)
    return frame.assign(city=np.random.default_rng(seed).choice(["paris", "rome"], rows))


def test_warm_start_adds_trees_and_keeps_the_old_ones() -> None:
    old, new = with_city(120, 0), with_city(80, 1)
    model = fitted(RandomForestClassifier(n_estimators=5, random_state=0), old)
    grown, info = continue_training(model, new, target="y", method="warm_start", add_estimators=10)
    forest, before = grown["model"], model["model"]
    assert len(forest.estimators_) == 15 and forest.n_estimators == 15
    assert not forest.warm_start  # only the size changed, not the parent's settings
    assert info == {
        "method": "warm_start", "estimator": "sklearn.ensemble._forest.RandomForestClassifier",
        "estimators_before": 5, "estimators_after": 15, "add_estimators": 10,
        "batches": None, "batch_size": None, "rows": 80,
    }  # fmt: skip
    x = model["preprocess"].transform(new.drop(columns="y"))
    for old_tree, kept in zip(before.estimators_, forest.estimators_[:5], strict=True):
        assert np.array_equal(old_tree.predict_proba(x), kept.predict_proba(x))
    # The fitted preprocessing was reused, not refitted on the new rows.
    assert np.array_equal(grown["preprocess"].transform(old.drop(columns="y")),
                          model["preprocess"].transform(old.drop(columns="y")))  # fmt: skip
    assert len(before.estimators_) == 5 and before.n_estimators == 5  # the input is untouched
    assert grown is not model and grown.score(new.drop(columns="y"), new["y"]) > 0.8


def test_warm_start_adds_boosting_stages_and_iterations() -> None:
    model = fitted(GradientBoostingClassifier(n_estimators=5, random_state=0), with_city(100, 0))
    grown, info = continue_training(
        model, with_city(60, 1), target="y", method="warm_start", add_estimators=3
    )
    assert grown["model"].estimators_.shape[0] == 8 and model["model"].estimators_.shape[0] == 5
    assert (info["estimators_before"], info["estimators_after"]) == (5, 8)

    rng = np.random.default_rng(3)
    reg = pd.DataFrame({"a": rng.normal(size=150), "b": rng.normal(size=150)})
    reg["y"] = 2 * reg["a"] - reg["b"]
    model = fitted(HistGradientBoostingRegressor(max_iter=5), reg[:100])
    grown, info = continue_training(
        model, reg[100:], target="y", method="warm_start", add_estimators=4
    )
    assert grown["model"].n_iter_ == 9 and grown["model"].max_iter == 9
    assert model["model"].n_iter_ == 5 and model["model"].max_iter == 5
    assert info["estimators_after"] == 9


def test_warm_start_of_a_linear_model_starts_from_the_previous_coefficients() -> None:
    frame = with_city(150, 0)
    model = fitted(LogisticRegression(), frame)
    coef = model["model"].coef_.copy()
    again, info = continue_training(model, frame, target="y", method="warm_start")
    # Already at the optimum for these rows, so the solver stops almost at once.
    assert again["model"].n_iter_[0] < model["model"].n_iter_[0]
    assert info["estimators_before"] is None and info["add_estimators"] is None
    assert np.array_equal(model["model"].coef_, coef) and not model["model"].warm_start


def test_partial_fit_in_mini_batches() -> None:
    model = fitted(SGDClassifier(random_state=0), with_city(100, 0))
    coef = model["model"].coef_.copy()
    new = with_city(70, 1)
    online, info = continue_training(model, new, target="y", method="partial_fit", batch_size=32)
    assert info["batches"] == math.ceil(70 / 32) == 3 and info["batch_size"] == 32
    assert info["rows"] == 70 and info["method"] == "partial_fit"
    assert not np.array_equal(online["model"].coef_, coef)
    assert np.array_equal(model["model"].coef_, coef)
    assert list(online.classes_) == ["no", "yes"]
    # A bare estimator (preprocessing "none") is continued directly, by column name.
    bare = SGDClassifier(random_state=0).fit(new[["a", "b"]], new["y"])
    _, info = continue_training(bare, new, target="y", method="partial_fit", batch_size=100)
    assert info["batches"] == 1


@pytest.mark.parametrize(
    ("estimator", "kwargs", "message"),
    [
        (SGDClassifier(), {"method": "partial_fit", "label": "maybe"},
         "class labels the model has never seen: maybe"),
        (RandomForestClassifier(n_estimators=3), {"method": "warm_start", "add_estimators": 2,
         "label": "yes"}, "warm start needs rows of every class the model knows; missing: no"),
        (LogisticRegression(), {"method": "warm_start", "add_estimators": 5},
         "add_estimators only applies to warm start of tree ensembles; LogisticRegression with "
         "warm_start does not grow; add_estimators needs "
         "one of: sklearn.ensemble.HistGradientBoostingRegressor, "
         "sklearn.ensemble.RandomForestClassifier"),
        (RandomForestClassifier(n_estimators=3), {"method": "partial_fit"},
         "RandomForestClassifier cannot continue training with partial_fit; it supports "
         "warm_start; partial_fit needs one of: sklearn.linear_model.SGDClassifier, "
         "sklearn.naive_bayes.GaussianNB"),
        (RandomForestClassifier(n_estimators=3), {"method": "warm_start"},
         "needs add_estimators"),
        (SGDClassifier(), {"method": "partial_fit", "batch_size": 0}, "batch_size must be"),
    ],
    ids=["unseen-class", "missing-class", "add-on-linear", "no-partial-fit", "no-add", "batch-0"],
)  # fmt: skip
def test_continue_training_refusals(estimator: Any, kwargs: dict[str, Any], message: str) -> None:
    model = fitted(estimator, with_city(60, 0))
    options = dict(kwargs)  # parametrize shares the dict between runs
    label = options.pop("label", None)
    new = with_city(30, 1) if label is None else with_city(30, 1).assign(y=label)
    with pytest.raises(TrainingError) as caught:
        continue_training(model, new, target="y", allowed=CONTINUABLE, **options)
    assert message in str(caught.value)


def test_capabilities() -> None:
    assert capabilities([*CONTINUABLE, "sklearn.nope.Missing"]) == {
        "warm_start": [
            "sklearn.ensemble.HistGradientBoostingRegressor",
            "sklearn.ensemble.RandomForestClassifier",
            "sklearn.linear_model.LogisticRegression",
            "sklearn.linear_model.SGDClassifier",
        ],
        "add_estimators": [
            "sklearn.ensemble.HistGradientBoostingRegressor",
            "sklearn.ensemble.RandomForestClassifier",
        ],
        "partial_fit": ["sklearn.linear_model.SGDClassifier", "sklearn.naive_bayes.GaussianNB"],
    }
