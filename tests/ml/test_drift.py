import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from app.ml.drift import (
    DEFAULT_THRESHOLDS,
    OTHER,
    PSI_EPSILON,
    FeatureDrift,
    dataset_drift,
    default_method,
    feature_drift,
    prediction_drift,
    profile_values,
)
from app.ml.profile import profile_frame

SEED = 20261127


def rng(offset: int = 0) -> np.random.Generator:
    return np.random.default_rng(SEED + offset)


@pytest.fixture(scope="module")
def normal_reference() -> dict[str, Any]:
    """The stored profile of 100,000 standard normal training values."""
    return profile_values(rng().normal(size=100_000))


@pytest.fixture(scope="module")
def category_reference() -> dict[str, Any]:
    return profile_values(rng(1).choice(["a", "b", "c", "d"], size=50_000, p=[0.4, 0.3, 0.2, 0.1]))


def as_json(result: FeatureDrift) -> dict[str, Any]:
    """to_dict must survive strict JSON (no NaN, no inf)."""
    document = result.to_dict()
    assert json.loads(json.dumps(document, allow_nan=False)) == document
    return document


# --- automatic choice -----------------------------------------------------------------------


def test_default_method_by_kind_and_current_size() -> None:
    assert default_method("numeric", 1000) == "ks"
    assert default_method("numeric", 1001) == "wasserstein"
    assert default_method("categorical", 1000) == "chisquare"
    assert default_method("categorical", 1001) == "jensenshannon"
    assert DEFAULT_THRESHOLDS == {
        "ks": 0.05,
        "chisquare": 0.05,
        "wasserstein": 0.1,
        "jensenshannon": 0.1,
        "psi": 0.2,
    }


@pytest.mark.parametrize(("n", "method"), [(500, "ks"), (200_000, "wasserstein")])
def test_auto_method_numeric(normal_reference: dict[str, Any], n: int, method: str) -> None:
    result = feature_drift(normal_reference, rng(2).normal(size=n), feature="x")
    assert (result.method, result.feature, result.kind, result.type) == (
        method,
        "x",
        "numeric",
        "float",
    )
    assert result.current_n == n and result.reference_n == 100_000


@pytest.mark.parametrize(("n", "method"), [(800, "chisquare"), (20_000, "jensenshannon")])
def test_auto_method_categorical(category_reference: dict[str, Any], n: int, method: str) -> None:
    values = rng(3).choice(["a", "b", "c", "d"], size=n, p=[0.4, 0.3, 0.2, 0.1])
    assert feature_drift(category_reference, values).method == method


# --- no drift on the same distribution ------------------------------------------------------


@pytest.mark.parametrize("method", ["ks", "wasserstein", "psi", "jensenshannon", "chisquare"])
@pytest.mark.parametrize("n", [500, 200_000])
def test_numeric_no_drift_on_same_distribution(
    normal_reference: dict[str, Any], method: Any, n: int
) -> None:
    result = feature_drift(normal_reference, rng(4).normal(size=n), method)
    assert not result.drifted, result
    if method in ("ks", "chisquare"):
        assert result.p_value is not None and result.p_value >= 0.05
    else:
        assert result.p_value is None and result.statistic is not None
    as_json(result)


@pytest.mark.parametrize("method", ["chisquare", "jensenshannon", "psi"])
@pytest.mark.parametrize("n", [500, 200_000])
def test_categorical_no_drift_on_same_distribution(
    category_reference: dict[str, Any], method: Any, n: int
) -> None:
    values = rng(5).choice(["a", "b", "c", "d"], size=n, p=[0.4, 0.3, 0.2, 0.1])
    result = feature_drift(category_reference, values, method)
    assert not result.drifted, result
    assert result.bins == ["a", "b", "c", "d", OTHER]
    assert sum(result.current_counts) == n and result.current_counts[-1] == 0


# --- agreement with the raw-data statistics -------------------------------------------------


@pytest.mark.parametrize(
    "draw",
    [
        lambda g, n: g.normal(3, 2, n),
        lambda g, n: g.lognormal(0, 1, n),  # heavy right tail: the histogram edges pin it
        lambda g, n: g.poisson(3, n),  # integer: mass on the integers, not between them
    ],
    ids=["normal", "lognormal", "poisson"],
)
def test_profile_reconstruction_tracks_the_raw_reference(draw: Any) -> None:
    """KS and Wasserstein from the stored profile stay close to scipy on the raw rows."""
    reference, current = draw(rng(6), 100_000), draw(rng(7), 5_000) * 1.05
    profile = profile_values(reference)
    ks = feature_drift(profile, current, "ks")
    raw = stats.ks_2samp(reference, current)
    assert ks.statistic == pytest.approx(raw.statistic, abs=0.005)
    wasserstein = feature_drift(profile, current, "wasserstein")
    expected = stats.wasserstein_distance(reference, current) / reference.std()
    assert wasserstein.statistic == pytest.approx(expected, abs=0.01)


def test_ks_p_value_matches_scipy_on_a_small_window(normal_reference: dict[str, Any]) -> None:
    current = rng(8).normal(0.15, 1, 400)
    result = feature_drift(normal_reference, current, "ks")
    # scipy's asymptotic two-sample p-value on a raw reference sample of the same size
    raw = stats.ks_2samp(rng().normal(size=100_000), current, method="asymp")
    assert result.p_value == pytest.approx(raw.pvalue, rel=0.5, abs=1e-3)
    assert result.drifted == (raw.pvalue < 0.05)


# --- shifts at scale: why the method choice matters -----------------------------------------


@pytest.fixture(scope="module")
def million() -> dict[str, Any]:
    reference = rng(9).normal(size=1_000_000)
    return {"profile": profile_values(reference), "reference": reference}


def test_wasserstein_flags_a_fifth_of_a_std_at_a_million_rows(million: dict[str, Any]) -> None:
    result = feature_drift(million["profile"], rng(10).normal(0.2, 1, 1_000_000))
    assert result.method == "wasserstein" and result.drifted
    assert result.statistic == pytest.approx(0.2, abs=0.01)  # a pure shift moves W1 by itself


def test_wasserstein_does_not_false_alarm_at_a_million_rows(million: dict[str, Any]) -> None:
    result = feature_drift(million["profile"], rng(11).normal(size=1_000_000))
    assert result.method == "wasserstein" and not result.drifted
    assert result.statistic is not None and result.statistic < 0.01


def test_ks_at_a_million_rows_flags_a_negligible_shift(million: dict[str, Any]) -> None:
    """A 0.01-std shift is 'significant' to KS at this size (on the raw rows too), yet no one
    would retrain for it; the automatic choice at this size is the distance, which says no."""
    current = rng(12).normal(0.01, 1, 1_000_000)
    ks = feature_drift(million["profile"], current, "ks")
    assert ks.drifted and ks.p_value is not None and ks.p_value < 1e-6
    assert stats.ks_2samp(million["reference"], current).pvalue < 1e-6  # not an artefact
    auto = feature_drift(million["profile"], current)
    assert auto.method == "wasserstein" and not auto.drifted
    assert auto.statistic == pytest.approx(0.01, abs=0.005)


# --- categorical shifts ---------------------------------------------------------------------


def test_chisquare_flags_a_shifted_mix(category_reference: dict[str, Any]) -> None:
    values = rng(13).choice(["a", "b", "c", "d"], size=800, p=[0.3, 0.3, 0.25, 0.15])
    result = feature_drift(category_reference, values)
    assert result.method == "chisquare" and result.drifted
    assert result.p_value is not None and result.p_value < 0.01
    table = [result.reference_counts[:4], result.current_counts[:4]]
    expected = stats.chi2_contingency(table, correction=False)
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    # with a reference 60x the window, homogeneity is Evidently's goodness of fit, near enough
    counts, reference = np.array(table[1], float), np.array(table[0], float)
    fit = stats.chisquare(counts, reference / reference.sum() * counts.sum())
    assert result.statistic == pytest.approx(fit.statistic, rel=0.05)


def test_chisquare_counts_the_reference_noise_too(normal_reference: dict[str, Any]) -> None:
    """A window twice the reference's size: goodness of fit to the reference proportions
    would take their sampling noise for drift; the two-sample test does not."""
    result = feature_drift(normal_reference, rng(24).normal(size=200_000), "chisquare")
    assert not result.drifted and result.p_value is not None and result.p_value > 0.05
    counts, reference = (
        np.array(c[1:-1], float) for c in (result.current_counts, result.reference_counts)
    )
    fit = stats.chisquare(counts, reference / reference.sum() * counts.sum())
    assert result.statistic is not None and fit.statistic > result.statistic * 2


def test_jensenshannon_flags_a_shifted_mix_and_matches_scipy(
    category_reference: dict[str, Any],
) -> None:
    values = rng(14).choice(["a", "b", "c", "d"], size=50_000, p=[0.2, 0.3, 0.3, 0.2])
    result = feature_drift(category_reference, values)
    assert result.method == "jensenshannon" and result.drifted
    expected = jensenshannon(result.reference_counts[:4], result.current_counts[:4])
    assert result.statistic == pytest.approx(expected)


def test_unseen_categories_land_in_other_and_flag() -> None:
    reference = profile_values(np.array(["x", "y"] * 500))
    current = np.array(["x"] * 480 + ["y"] * 480 + ["z"] * 40)
    result = feature_drift(reference, current)
    assert result.bins == ["x", "y", OTHER]
    assert result.reference_counts == [500, 500, 0]
    assert result.current_counts == [480, 480, 40]
    assert result.drifted and result.note is not None and "never saw" in result.note
    assert as_json(result)["statistic"] is not None  # finite despite a zero reference bin
    for method in ("jensenshannon", "psi"):
        assert feature_drift(reference, current, method).statistic is not None


def test_booleans_and_nulls() -> None:
    reference = profile_values(pd.array([True, False, None] * 400, dtype="boolean"))
    assert reference["type"] == "boolean"
    current = [True] * 700 + [False] * 200 + [None] * 100
    result = feature_drift(reference, current)
    assert result.bins == ["true", "false", OTHER]
    assert result.current_counts == [700, 200, 0]
    assert (result.current_nulls, result.reference_nulls) == (100, 400)
    assert result.drifted
    same = feature_drift(reference, np.array([True, False] * 300))
    assert not same.drifted


# --- PSI by hand ----------------------------------------------------------------------------


def test_psi_categorical_by_hand() -> None:
    reference = {"kind": "categorical", "type": "string", "count": 100, "nulls": 0}
    reference |= {"counts": {"a": 50, "b": 30, "c": 20}, "other": 0}
    current = ["a"] * 40 + ["b"] * 30 + ["c"] * 20 + ["new"] * 10
    result = feature_drift(reference, current, "psi")
    # (cur - ref) * ln(cur / ref) per bin; the empty reference "(other)" bin counts as 1e-4
    expected = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.1 - PSI_EPSILON) * math.log(0.1 / 1e-4)
    assert result.statistic == pytest.approx(expected, rel=1e-12)
    assert result.statistic == pytest.approx(0.712399, abs=1e-6)
    assert result.threshold == 0.2 and result.drifted


def test_psi_numeric_by_hand_with_out_of_range_values() -> None:
    reference = profile_values(np.arange(10.0), bins=2)  # edges 0, 4.5, 9; 5 values each
    assert reference["histogram"] == {"edges": [0.0, 4.5, 9.0], "counts": [5, 5]}
    current = [1.0, 2.0, 3.0, 6.0, 7.0, 8.0, 10.0, 11.0]
    result = feature_drift(reference, current, "psi")
    assert result.bins == [0.0, 4.5, 9.0]
    assert result.reference_counts == [0, 5, 5, 0]
    assert result.current_counts == [0, 3, 3, 2]  # below, two bins, above the reference max
    expected = 2 * (0.375 - 0.5) * math.log(0.375 / 0.5)
    expected += (0.25 - PSI_EPSILON) * math.log(0.25 / PSI_EPSILON)
    assert result.statistic == pytest.approx(expected, rel=1e-12)
    assert result.note == "2 of 8 current values lie outside the reference range"


# --- overrides ------------------------------------------------------------------------------


def test_method_and_threshold_overrides(normal_reference: dict[str, Any]) -> None:
    current = rng(15).normal(0.15, 1, 50_000)
    assert feature_drift(normal_reference, current).drifted  # W ~ 0.15 >= 0.1
    relaxed = feature_drift(normal_reference, current, thresholds={"wasserstein": 0.2})
    assert (relaxed.threshold, relaxed.drifted) == (0.2, False)
    forced = feature_drift(normal_reference, current, "psi", {"psi": 0.5}, threshold=0.01)
    assert (forced.method, forced.threshold, forced.drifted) == ("psi", 0.01, True)
    with pytest.raises(ValueError, match="unknown drift method"):
        feature_drift(normal_reference, current, "energy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        feature_drift(normal_reference, current, threshold=-1)


def test_numeric_only_methods_refused_on_categories(category_reference: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="does not apply"):
        feature_drift(category_reference, ["a", "b"], "wasserstein")


def test_dataset_drift_overrides_per_feature() -> None:
    g = rng(16)
    frame = pd.DataFrame({"u": g.normal(size=20_000), "v": g.normal(size=20_000)})
    frame["c"] = g.choice(["p", "q"], size=20_000)
    profile = profile_frame(frame)
    current = {
        "u": g.normal(0.15, 1, 5_000),
        "v": g.normal(size=5_000),
        "c": g.choice(["p", "q"], 5_000),
    }
    auto = dataset_drift(profile, current)
    assert {n: r.method for n, r in auto.features.items()} == {
        "u": "wasserstein",
        "v": "wasserstein",
        "c": "jensenshannon",
    }
    assert auto.drifted_features == ["u"]
    custom = dataset_drift(
        profile,
        current,
        numeric_method="psi",
        categorical_method="chisquare",
        methods={"v": "ks"},
        thresholds={"psi": 0.3},
        feature_thresholds={"u": 0.01},
    )
    methods = {n: (r.method, r.threshold) for n, r in custom.features.items()}
    assert methods == {"u": ("psi", 0.01), "v": ("ks", 0.05), "c": ("chisquare", 0.05)}


# --- edge cases -----------------------------------------------------------------------------


def test_empty_window_is_refused(normal_reference: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="empty"):
        feature_drift(normal_reference, np.array([]), feature="x")
    profile = {"rows": 3, "columns": {"x": normal_reference}}
    with pytest.raises(ValueError, match="empty"):
        dataset_drift(profile, {"x": []})


def test_all_null_current_is_drift(normal_reference: dict[str, Any]) -> None:
    result = feature_drift(normal_reference, [None, float("nan"), float("inf")])
    assert result.drifted and result.statistic is None and result.p_value is None
    assert (result.current_n, result.current_nulls) == (0, 3)
    assert result.note == "the current window has no non-null values"
    assert sum(as_json(result)["current_counts"]) == 0


def test_all_null_reference() -> None:
    reference = profile_values(np.full(100, np.nan))
    assert reference["count"] == 0
    result = feature_drift(reference, [1.0, 2.0])
    assert result.drifted and result.note == "the reference has no non-null values"
    assert not feature_drift(reference, [None, None]).drifted
    as_json(result)


@pytest.mark.parametrize("method", ["ks", "wasserstein", "psi", "jensenshannon", "chisquare"])
def test_constant_reference(method: Any) -> None:
    reference = profile_values(np.full(5_000, 7.0))
    assert reference["std"] == 0.0
    same = feature_drift(reference, np.full(300, 7.0), method)
    assert not same.drifted and same.statistic == pytest.approx(0.0, abs=1e-12)
    moved = feature_drift(reference, np.r_[np.full(250, 7.0), np.full(50, 7.5)], method)
    assert moved.drifted
    assert moved.current_counts == [0, 250, 50]
    as_json(moved)


def test_values_outside_the_reference_range(normal_reference: dict[str, Any]) -> None:
    current = rng(17).normal(10, 1, 3_000)  # nearly all beyond the reference maximum
    result = feature_drift(normal_reference, current)
    assert result.drifted and result.statistic == pytest.approx(10, abs=0.1)
    assert result.current_counts[-1] > 2_900 and result.reference_counts[-1] == 0
    assert result.note is not None and "outside the reference range" in result.note


def test_mixed_inputs_nulls_and_strings_in_numeric(normal_reference: dict[str, Any]) -> None:
    series = pd.Series([0.1, None, -0.2, 0.3] * 100, dtype="Float64")
    result = feature_drift(normal_reference, series)
    assert (result.current_n, result.current_nulls) == (300, 100)
    messy = feature_drift(normal_reference, [0.5, "oops", None, -1.0] * 50)
    assert (messy.current_n, messy.current_nulls) == (100, 100)


def test_integer_reference_with_integer_window() -> None:
    reference = profile_values(rng(18).integers(18, 90, 50_000))
    assert reference["type"] == "integer"
    same = feature_drift(reference, rng(19).integers(18, 90, 800))
    older = feature_drift(reference, rng(20).integers(25, 97, 800))
    assert not same.drifted and older.drifted


def test_datetime_columns_are_refused() -> None:
    profile: dict[str, Any] = profile_frame(
        pd.DataFrame({"t": pd.date_range("2024-01-01", periods=5)})
    )
    with pytest.raises(ValueError, match="no drift comparison"):
        feature_drift(profile["columns"]["t"], ["2024-01-01"])


# --- dataset drift --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def four_features() -> dict[str, Any]:
    g = rng(21)
    frame = pd.DataFrame({name: g.normal(size=10_000) for name in "abcd"})
    frame["when"] = pd.date_range("2024-01-01", periods=10_000, freq="min")
    frame["target"] = g.integers(0, 2, 10_000)
    return profile_frame(frame)


def test_dataset_drift_share_rule(four_features: dict[str, Any]) -> None:
    g = rng(22)
    current: dict[str, Any] = {n: g.normal(0.5 if n in "ab" else 0.0, 1, 3_000) for n in "abcd"}
    current |= {"when": ["2024-02-01"] * 3_000, "extra": [1] * 3_000}
    result = dataset_drift(four_features, current)
    assert result.drifted_features == ["a", "b"]
    assert (result.drifted_share, result.share, result.dataset_drifted) == (0.5, 0.5, True)
    assert not dataset_drift(four_features, current, share=0.51).dataset_drifted
    assert result.skipped == {
        "when": "datetime columns are not compared",
        "target": "not in the current window",
        "extra": "not in the reference profile",
    }
    document = result.to_dict()
    assert json.loads(json.dumps(document, allow_nan=False)) == document
    assert (document["n_features"], document["n_drifted"]) == (4, 2)
    one = dataset_drift(four_features, {"a": current["a"], "c": current["c"], "d": current["d"]})
    assert one.drifted_share == pytest.approx(1 / 3) and not one.dataset_drifted


def test_dataset_drift_refusals(four_features: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="share"):
        dataset_drift(four_features, {"a": [1.0]}, share=0)
    with pytest.raises(ValueError, match="no current column"):
        dataset_drift(four_features, {"nope": [1.0]})


# --- predictions ----------------------------------------------------------------------------


def test_prediction_drift_against_the_output_profile() -> None:
    g = rng(23)
    scores = profile_values(g.beta(2, 5, 20_000))  # the model's scores on reference data
    assert not prediction_drift(scores, g.beta(2, 5, 5_000)).drifted
    shifted = prediction_drift(scores, g.beta(3, 4, 5_000))
    assert shifted.feature == "prediction" and shifted.drifted
    labels = profile_frame(pd.DataFrame({"label": g.choice(["no", "yes"], 20_000, p=[0.8, 0.2])}))
    result = prediction_drift(labels, g.choice(["no", "yes"], 900, p=[0.6, 0.4]))
    assert (result.feature, result.method, result.drifted) == ("label", "chisquare", True)
