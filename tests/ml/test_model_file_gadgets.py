"""Crafted skops files: what an editor with upload rights could send instead of a model.

Each gadget is a schema.json that names a callable skops would call while loading. None may
run, in `inspect_file` (the API, at upload) or in `load_model` (worker, API, replicas) even
when the file's names were recorded under an older, looser rule.
"""

import json
import pickle
import zipfile
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.base import is_classifier
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from app.ml.model_files import (
    MAX_SCHEMA_BYTES,
    ModelFileError,
    inspect_file,
    load_model,
    sha256_file,
)
from app.pipelines.spec import ALLOWED_ESTIMATORS


def json_node(value: Any) -> dict[str, Any]:
    return {
        "__class__": "str",
        "__module__": "builtins",
        "__loader__": "JsonNode",
        "content": json.dumps(value),
        "is_json": True,
    }


def tuple_node(*items: dict[str, Any]) -> dict[str, Any]:
    return {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
            "content": list(items)}  # fmt: skip


def call_node(module: str, name: str, *args: dict[str, Any]) -> dict[str, Any]:
    return {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
            "content": tuple_node(*args)}  # fmt: skip


def crafted(path: Path, schema: Any, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        text = schema if isinstance(schema, str | bytes) else json.dumps(schema)
        archive.writestr("schema.json", text)
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return path


def with_protocol(node: dict[str, Any]) -> dict[str, Any]:
    return {**node, "protocol": 2, "_skops_version": "0.16.0"}


class Marker:
    """Unpickling this creates a file: the proof that a pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def refuse_everywhere(path: Path, match: str) -> None:
    with pytest.raises(ModelFileError, match=match):
        inspect_file(path)
    # as if the file's names had been recorded by an earlier, prefix-based allowlist
    recorded = sorted(sio.get_untrusted_types(file=path))
    with pytest.raises(ModelFileError, match=match):
        load_model(path, digest=sha256_file(path), types=recorded)


def test_read_pickle_gadget_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(pickle.dumps(Marker(marker)))
    gadget = crafted(
        tmp_path / "g.skops",
        with_protocol(call_node("pandas", "read_pickle", json_node(str(payload)))),
    )
    refuse_everywhere(gadget, "pandas.read_pickle")
    assert not marker.exists()


def test_savetxt_gadget_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "written.txt"
    gadget = crafted(
        tmp_path / "g.skops",
        with_protocol(call_node("numpy", "savetxt", json_node(str(target)), json_node([1, 2]))),
    )
    refuse_everywhere(gadget, "numpy.savetxt")
    assert not target.exists()


def test_an_allowed_function_cannot_be_called_as_a_constructor(tmp_path: Path) -> None:
    """numpy.log1p may be a FunctionTransformer's func, never a constructor node's target."""
    gadget = crafted(tmp_path / "g.skops", with_protocol(call_node("numpy", "log1p", json_node(1))))
    refuse_everywhere(gadget, r"numpy.log1p \(ConstructorFromReduceNode\)")


@pytest.mark.parametrize(
    ("loader", "module", "name"),
    [
        ("ObjectNode", "subprocess", "Popen"),
        ("ObjectNode", "pandas.io.pytables", "HDFStore"),
        ("ObjectNode", "numpy", "memmap"),
        ("FunctionNode", "os", "system"),
        ("FunctionNode", "numpy", "load"),
        ("TypeNode", "builtins", "eval"),
        ("ObjectNode", "sklearnx", "Anything"),  # a prefix look-alike
    ],
)
def test_names_outside_the_exact_allowlist_are_refused(
    tmp_path: Path, loader: str, module: str, name: str
) -> None:
    node = {"__class__": name, "__module__": module, "__loader__": loader, "content": {}}
    gadget = crafted(tmp_path / "g.skops", with_protocol(node))
    with pytest.raises(ModelFileError, match=f"{module}.{name}"):
        inspect_file(gadget)


def test_method_and_operator_nodes_are_refused(tmp_path: Path) -> None:
    for loader in ("MethodNode", "OperatorFuncNode", "NoSuchNode"):
        node = {"__class__": "dict", "__module__": "builtins", "__loader__": loader, "content": {}}
        with pytest.raises(ModelFileError, match=f"node kind Flywheel does not load: '{loader}'"):
            inspect_file(crafted(tmp_path / f"{loader}.skops", with_protocol(node)))


TUPLE = tuple_node(json_node(1))


@pytest.mark.parametrize(
    ("schema", "match"),
    [
        (TUPLE, "protocol must be an integer, got None"),
        ({**TUPLE, "protocol": "2"}, "protocol must be an integer, got '2'"),
        ({**TUPLE, "protocol": 1.5}, "protocol must be an integer"),
        ({**TUPLE, "protocol": True}, "protocol must be an integer"),
        ({**TUPLE, "protocol": 99}, "corrupt"),
        ([TUPLE], "not a JSON object"),
        ("not json at all", "corrupt"),
        ("[" * 100_000 + "]" * 100_000, "corrupt"),
        (with_protocol({**TUPLE, "__loader__": 7}), "must be strings"),
        (with_protocol({**TUPLE, "__module__": None}), "must be strings"),
        (with_protocol({"__loader__": "TupleNode"}), "must be strings"),
        (with_protocol({**TUPLE, "content": None}), "corrupt"),
        (with_protocol({**TUPLE, "content": [{"__loader__": "CachedNode", "__class__": "str",
                                             "__module__": "builtins", "__id__": 5}]}), "corrupt"),
    ],
)  # fmt: skip
def test_malformed_schemas_are_a_model_file_error(tmp_path: Path, schema: Any, match: str) -> None:
    with pytest.raises(ModelFileError, match=match):
        inspect_file(crafted(tmp_path / "m.skops", schema))


def test_a_schema_that_inflates_past_the_bound_is_refused_before_parsing(tmp_path: Path) -> None:
    padding = b" " * (MAX_SCHEMA_BYTES + 1)
    bomb = crafted(tmp_path / "bomb.skops", b'{"protocol": 2' + padding + b"}")
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ModelFileError, match=r"schema\.json unpacks to"):
        inspect_file(bomb)


def test_every_estimator_flywheel_trains_passes_the_exact_allowlist(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60),
                      "city": rng.choice(["x", "y", "z"], 60)})  # fmt: skip
    numeric = ColumnTransformer(
        [("n", make_pipeline(SimpleImputer(), StandardScaler()), ["a", "b"]),
         ("c", OneHotEncoder(handle_unknown="ignore"), ["city"])]
    )  # fmt: skip
    for dotted in sorted(ALLOWED_ESTIMATORS):
        module, name = dotted.rsplit(".", 1)
        estimator = getattr(import_module(module), name)()
        target = (x["a"] > 0).astype(int) if is_classifier(estimator) else x["a"] * 2
        model = make_pipeline(numeric, FunctionTransformer(np.tanh), estimator).fit(x, target)
        path = tmp_path / f"{name}.skops"
        sio.dump(model, path)
        info = inspect_file(path)
        loaded = load_model(path, digest=info.digest, types=info.types)
        np.testing.assert_array_equal(loaded.predict(x), model.predict(x), err_msg=dotted)
