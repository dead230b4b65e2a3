"""The runner as the worker starts it: a real subprocess, talking through files and exit codes."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.ml.model_files import load_model, save_model
from app.ml.training import fit_builtin

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ALLOWED = ["sklearn.ensemble.RandomForestClassifier", "sklearn.linear_model.LogisticRegression"]

TRAIN_MODULE = """
import numpy as np
from sklearn.linear_model import LogisticRegression


def train(frame, params):
    print("user code sees", len(frame), "rows", flush=True)
    return LogisticRegression(C=params["C"]).fit(frame[["a", "b"]], frame["y"])


def hungry(frame, params):
    print("allocating", flush=True)
    block = np.ones(params["mb"] * 1024 * 1024 // 8)
    return LogisticRegression().fit(frame[["a", "b"]], frame["y"] if block[0] else None)


def broken(frame, params):
    raise RuntimeError("boom in user code")


def unfitted(frame, params):
    return LogisticRegression()


def report(workdir, name, repeat=1):
    return {"workdir_exists": __import__("os").path.isdir(workdir), "greeting": name * repeat}


def opaque(workdir):
    return object()
"""


def run(tmp_path: Path, request: dict[str, Any]) -> tuple[int, dict[str, Any], str, str]:
    workdir = tmp_path / f"work-{request['stage']}-{len(list(tmp_path.iterdir()))}"
    request = {"workdir": str(workdir), **request}
    path = tmp_path / f"request-{workdir.name}.json"
    path.write_text(json.dumps(request))
    done = subprocess.run(
        [sys.executable, "-m", "app.pipelines.runner", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result_path = workdir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    return done.returncode, result, done.stdout, done.stderr


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(size=300)
    city = rng.choice(["paris", "rome", "oslo"], 300)
    frame = pd.DataFrame({"a": a, "b": b, "city": city})
    frame["y"] = np.where(a + 0.5 * b + (city == "rome") > 0.3, "churn", "stay")
    frame.loc[::17, "city"] = None
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def numeric(dataset: Path) -> Path:
    path = dataset.with_name("numeric.csv")
    pd.read_csv(dataset).drop(columns="city").to_csv(path, index=False)
    return path


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    (source / "user_model.py").write_text(TRAIN_MODULE)
    return source


def train_request(dataset: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "stage": "train",
        "dataset_path": str(dataset),
        "dataset_format": "csv",
        "target": "y",
        "test_size": 0.25,
        "seed": 7,
        "estimator": "sklearn.ensemble.RandomForestClassifier",
        "hyperparameters": {"n_estimators": 20, "max_depth": 4},
        "preprocessing": "auto",
        "entrypoint": None,
        "source_dir": None,
        "allowed_estimators": ALLOWED,
        **overrides,
    }


def evaluate_request(dataset: Path, model: dict[str, Any], champion: dict[str, Any] | None,
                     **overrides: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "stage": "evaluate",
        "model_path": model["model_path"],
        "model_digest": model["model_digest"],
        "model_types": model["model_types"],
        "dataset_path": str(dataset),
        "dataset_format": "csv",
        "target": "y",
        "test_size": 0.25,
        "seed": 7,
        "use_holdout": True,
        "champion": champion,
        "thresholds": {"min": {"accuracy": 0.6}},
        "primary_metric": None,
        "tolerance": 0.0,
        **overrides,
    }


def test_builtin_train_then_evaluate_against_a_champion(tmp_path: Path, dataset: Path) -> None:
    code, forest, out, err = run(tmp_path, train_request(dataset))
    assert code == 0, err
    assert forest["model_class"] == "sklearn.pipeline.Pipeline"
    assert forest["task"] == "classification"
    assert forest["rows"] == {"train": 225, "test": 75}
    assert forest["split"] == {"test_size": 0.25, "seed": 7}
    assert forest["params"] == {
        "n_estimators": 20, "max_depth": 4, "random_state": 7,
        "estimator": "sklearn.ensemble.RandomForestClassifier",
    }  # fmt: skip
    assert {"train_accuracy", "holdout_accuracy", "holdout_roc_auc", "holdout_log_loss"} <= set(
        forest["metrics"]
    )
    assert Path(forest["model_path"]).name == "model.skops"
    assert Path(forest["model_path"]).is_file()
    assert "fitting sklearn.ensemble.RandomForestClassifier" in out and "metrics:" in out

    code, logistic, _, err = run(
        tmp_path, train_request(dataset, estimator="sklearn.linear_model.LogisticRegression",
                                hyperparameters={"C": 0.5})
    )  # fmt: skip
    assert code == 0, err
    champion = {
        "model_path": forest["model_path"],
        "digest": forest["model_digest"],
        "types": forest["model_types"],
    }
    code, verdict, out, err = run(tmp_path, evaluate_request(dataset, logistic, champion))
    assert code == 0, err
    assert verdict["rows"] == 75
    # Same seed and test_size: the evaluate stage rebuilt exactly the training holdout.
    for name, value in verdict["metrics"].items():
        assert value == pytest.approx(logistic["metrics"][f"holdout_{name}"])
    for name, value in verdict["champion_metrics"].items():
        assert value == pytest.approx(forest["metrics"][f"holdout_{name}"])
    check = verdict["checks"][-1]
    assert check["kind"] == "champion" and check["metric"] == "roc_auc"
    beats = verdict["metrics"]["roc_auc"] >= verdict["champion_metrics"]["roc_auc"]
    assert verdict["verdict"] == ("blessed" if beats else "rejected")
    assert verdict["checks"][0]["metric"] == "accuracy" and verdict["checks"][0]["passed"]

    code, strict, _, _ = run(
        tmp_path, evaluate_request(dataset, logistic, None, thresholds={"min": {"accuracy": 0.99}})
    )
    assert code == 0 and strict["verdict"] == "rejected" and strict["champion_metrics"] is None
    assert "below the minimum" in strict["reasons"][0]

    code, whole, _, _ = run(tmp_path, evaluate_request(dataset, logistic, None, use_holdout=False))
    assert code == 0 and whole["rows"] == 300


def test_a_champion_that_cannot_score_the_data_rejects(
    tmp_path: Path, dataset: Path, numeric: Path
) -> None:
    code, with_city, _, err = run(tmp_path, train_request(dataset))
    assert code == 0, err
    code, without_city, _, err = run(tmp_path, train_request(numeric))
    assert code == 0, err
    champion = {
        "model_path": with_city["model_path"],
        "digest": with_city["model_digest"],
        "types": with_city["model_types"],
    }
    code, result, _, err = run(tmp_path, evaluate_request(numeric, without_city, champion))
    assert code == 0, err
    assert result["verdict"] == "rejected" and result["champion_metrics"] == {}
    assert result["reasons"][0].startswith("the champion could not be evaluated")


def test_evaluate_refuses_a_tampered_model(tmp_path: Path, dataset: Path) -> None:
    code, trained, _, err = run(tmp_path, train_request(dataset))
    assert code == 0, err
    code, result, _, _ = run(
        tmp_path, evaluate_request(dataset, {**trained, "model_digest": "0" * 64}, None)
    )
    assert code == 2 and "digest mismatch" in result["error"]


def test_entrypoint_training(tmp_path: Path, numeric: Path, source_dir: Path) -> None:
    request = train_request(
        numeric,
        estimator=None,
        entrypoint="user_model:train",
        source_dir=str(source_dir),
        hyperparameters={"C": 2.0},
    )
    code, result, out, err = run(tmp_path, request)
    assert code == 0, err
    assert "user code sees 225 rows" in out
    assert result["model_class"] == "sklearn.linear_model._logistic.LogisticRegression"
    assert result["params"] == {"C": 2.0, "entrypoint": "user_model:train"}
    assert result["metrics"]["holdout_accuracy"] > 0.7


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"estimator": "sklearn.svm.SVC"}, "not allowed"),
        ({"hyperparameters": {"n_trees": 3}}, "unknown hyperparameter 'n_trees'"),
        ({"target": "label"}, "'label' is not in the dataset"),
        ({"estimator": None, "entrypoint": "user_model:unfitted"}, "unfitted LogisticRegression"),
        ({"estimator": None, "entrypoint": "user_model:nope"}, "has no function 'nope'"),
        ({"estimator": None, "entrypoint": "missing_module:f"}, "'missing_module' was not found"),
        (  # fitted without the city column, then asked to predict with it
            {"estimator": None, "entrypoint": "user_model:train", "hyperparameters": {"C": 1}},
            "could not predict",
        ),
    ],
)
def test_user_errors_exit_2_with_a_message(
    tmp_path: Path, dataset: Path, source_dir: Path, overrides: dict[str, Any], message: str
) -> None:
    request = train_request(dataset, source_dir=str(source_dir), **overrides)
    code, result, out, err = run(tmp_path, request)
    assert code == 2, err
    assert message in result["error"] and "error: " in out
    assert "Traceback" not in err


def test_bad_data_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"a,y\n1,2\n\x00\x01")
    code, result, _, _ = run(tmp_path, train_request(bad))
    assert code == 2 and "binary" in result["error"]


def test_a_crash_exits_1_with_the_traceback(
    tmp_path: Path, dataset: Path, source_dir: Path
) -> None:
    request = train_request(
        dataset, estimator=None, entrypoint="user_model:broken", source_dir=str(source_dir)
    )
    code, result, _, err = run(tmp_path, request)
    assert code == 1
    assert "Traceback" in err and "RuntimeError: boom in user code" in err
    assert "boom in user code" in result["error"]


def test_memory_limit_turns_a_runaway_allocation_into_a_user_error(
    tmp_path: Path, numeric: Path, source_dir: Path
) -> None:
    request = train_request(
        numeric,
        estimator=None,
        entrypoint="user_model:hungry",
        source_dir=str(source_dir),
        hyperparameters={"mb": 600},
        memory_limit_mb=200,
    )
    code, result, out, err = run(tmp_path, request)
    assert code == 2, err
    assert "allocating" in out  # the limit left room to start; the allocation hit it
    assert result == {"error": "training ran out of memory (limit 200 MB)"}
    # The same allocation fits a larger budget, so it was the limit that stopped it.
    code, result, _, err = run(tmp_path, {**request, "memory_limit_mb": 1500})
    assert code == 0, err
    assert result["model_class"].endswith("LogisticRegression")


def test_python_stage(tmp_path: Path, source_dir: Path) -> None:
    request = {
        "stage": "python",
        "source_dir": str(source_dir),
        "function": "user_model:report",
        "args": {"name": "hi", "repeat": 2},
    }
    code, result, out, err = run(tmp_path, request)
    assert code == 0, err
    assert result == {"return": {"workdir_exists": True, "greeting": "hihi"}}
    assert "calling user_model:report" in out
    code, result, _, err = run(tmp_path, {**request, "function": "user_model:opaque", "args": {}})
    assert code == 0, err
    assert result["return"].startswith("<object object at")


def test_train_continues_a_saved_champion_with_more_trees(tmp_path: Path, dataset: Path) -> None:
    champion = fit_builtin(
        pd.read_csv(dataset),
        target="y",
        estimator="sklearn.ensemble.RandomForestClassifier",
        hyperparameters={"n_estimators": 8, "max_depth": 4, "random_state": 0},
        preprocessing="auto",
        allowed=ALLOWED,
    )
    saved = save_model(champion, tmp_path / "champion.skops")
    parent = {
        "model_path": str(tmp_path / "champion.skops"),
        "digest": saved.digest,
        "types": saved.types,
        "method": "warm_start",
        "add_estimators": 5,
        "batch_size": 256,
    }
    request = train_request(dataset, estimator=None, continue_from=parent)
    code, result, out, err = run(tmp_path, request)
    assert code == 0, err
    assert result["continued"] == {
        "method": "warm_start", "estimator": "sklearn.ensemble._forest.RandomForestClassifier",
        "estimators_before": 8, "estimators_after": 13, "add_estimators": 5,
        "batches": None, "batch_size": None, "rows": 225,
    }  # fmt: skip
    assert result["params"] == {
        "n_estimators": 20, "max_depth": 4,  # recorded as requested, not used for fitting
        "continue_method": "warm_start", "parent_digest": saved.digest,
    }  # fmt: skip
    assert result["rows"] == {"train": 225, "test": 75} and "holdout_accuracy" in result["metrics"]
    assert "continuing Pipeline" in out
    model = load_model(
        Path(result["model_path"]), digest=result["model_digest"], types=result["model_types"]
    )
    assert len(model["model"].estimators_) == 13
    assert len(champion["model"].estimators_) == 8

    # A tampered parent is refused like a tampered champion, before any fitting.
    code, refused, _, _ = run(
        tmp_path, {**request, "continue_from": {**parent, "digest": "0" * 64}}
    )
    assert code == 2 and "digest mismatch" in refused["error"]
