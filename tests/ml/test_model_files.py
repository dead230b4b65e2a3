import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from app.ml.model_files import ModelFileError, inspect_file, load_model, save_model


def frame() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"a": rng.normal(size=80), "c": rng.choice(["x", "y", "z"], 80)})
    return x, (x["a"] > 0).astype(int).to_numpy()


def test_pipeline_with_column_transformer_round_trips(tmp_path: Path) -> None:
    x, y = frame()
    pipeline = Pipeline(
        [
            (
                "prep",
                ColumnTransformer([("n", StandardScaler(), ["a"]), ("c", OneHotEncoder(), ["c"])]),
            ),
            ("clf", LogisticRegression()),
        ]
    ).fit(x, y)
    info = save_model(pipeline, tmp_path / "m.skops")
    assert "sklearn.compose._column_transformer.ColumnTransformer" in info.types
    loaded = load_model(tmp_path / "m.skops", digest=info.digest, types=info.types)
    np.testing.assert_array_equal(loaded.predict_proba(x), pipeline.predict_proba(x))


def test_digest_mismatch_is_refused(tmp_path: Path) -> None:
    x, y = frame()
    info = save_model(RandomForestClassifier(n_estimators=3).fit(x[["a"]], y), tmp_path / "m.skops")
    with pytest.raises(ModelFileError, match="digest mismatch"):
        load_model(tmp_path / "m.skops", digest="0" * 64, types=info.types)


def test_types_not_recorded_are_refused(tmp_path: Path) -> None:
    x, y = frame()
    info = save_model(RandomForestClassifier(n_estimators=3).fit(x[["a"]], y), tmp_path / "m.skops")
    recorded = [t for t in info.types if t != "sklearn.tree._tree.Tree"]
    with pytest.raises(ModelFileError, match="not recorded"):
        load_model(tmp_path / "m.skops", digest=info.digest, types=recorded)


def test_pickle_zip_and_foreign_types_are_refused(tmp_path: Path) -> None:
    (tmp_path / "p.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelFileError, match="pickle"):
        inspect_file(tmp_path / "p.pkl")
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(ModelFileError, match="not a skops file"):
        inspect_file(tmp_path / "t.txt")
    sio.dump(Foreign(), tmp_path / "f.skops")
    with pytest.raises(ModelFileError, match="Foreign"):
        inspect_file(tmp_path / "f.skops")
    with pytest.raises(ModelFileError, match="Foreign"):
        save_model(Foreign(), tmp_path / "g.skops")


class Foreign:
    pass
