"""Model files: saved with skops, never pickle; verified by digest and an exact type list.

A pickle (or joblib) file runs arbitrary code when loaded, so the registry refuses it. A skops
file is a tree of nodes, each naming the type or function it will construct, call or return.
Every node is checked before skops sees the file: its loader must be one we accept, and the
name it uses must be in an exact allowlist (classes for nodes that construct, ufuncs for
nodes that return a function). Module prefixes are never trusted: `pandas.read_pickle` or
`numpy.savetxt` would run as a "constructor". We record the names a file uses when it is
registered and, when loading, refuse a file whose digest or names differ from the record.
"""

import hashlib
import importlib
import json
import pickle  # only pickle.whichmodule: nothing here unpickles
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio
from sklearn.utils import all_estimators

# Loaders that construct (or reference) a class named by the node, and those that return a
# function. skops' other loaders (MethodNode, OperatorFuncNode) are refused: a bound method
# or an operator.methodcaller can call anything on an object.
CLASS_LOADERS = frozenset(
    {
        "DictNode", "DefaultDictNode", "ListNode", "SetNode", "TupleNode", "BytesNode",
        "BytearrayNode", "SliceNode", "TypeNode", "ConstructorFromReduceNode", "ObjectNode",
        "JsonNode", "CachedNode", "PartialNode", "NdArrayNode", "MaskedArrayNode",
        "RandomStateNode", "RandomGeneratorNode", "DTypeNode", "SparseMatrixNode", "ReduceNode",
        "TreeNode", "LossNode",
    }
)  # fmt: skip
FUNCTION_LOADERS = frozenset({"FunctionNode"})

# Classes beyond scikit-learn's public estimators that fitted models hold, by their import
# path; each is resolved to the name skops writes (a module may move between versions).
EXTRA_CLASS_PATHS: tuple[str, ...] = (
    *(f"builtins.{name}" for name in (
        "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int",
        "float", "complex", "bool", "slice", "range",
    )),
    "builtins.NoneType", "collections.OrderedDict", "collections.defaultdict", "functools.partial",
    "numpy.ndarray", "numpy.dtype", "numpy.ma.MaskedArray", "numpy.random.RandomState",
    "numpy.random.Generator", "numpy.random.PCG64", "numpy.random.MT19937",
    "numpy.random.Philox", "numpy.random.SFC64", "numpy.random.SeedSequence",
    *(f"scipy.sparse.{kind}_{form}" for kind in ("csr", "csc", "coo")
      for form in ("matrix", "array")),
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.neighbors.KDTree", "sklearn.neighbors.BallTree",
    *(f"sklearn._loss.link.{name}" for name in (
        "HalfLogitLink", "IdentityLink", "Interval", "LogitLink", "LogLink", "MultinomialLogit",
    )),
    *(f"sklearn._loss.loss.{prefix}{name}" for prefix in ("", "Cy") for name in (
        "AbsoluteError", "ExponentialLoss", "HalfBinomialLoss", "HalfGammaLoss",
        "HalfMultinomialLoss", "HalfPoissonLoss", "HalfSquaredError", "HalfTweedieLoss",
        "HalfTweedieLossIdentity", "HuberLoss", "PinballLoss",
    )),
    *(f"sklearn.linear_model._sgd_fast.{name}" for name in (
        "Hinge", "SquaredHinge", "ModifiedHuber", "EpsilonInsensitive",
        "SquaredEpsilonInsensitive", "Log", "SquaredLoss", "Huber",
    )),
    *(f"sklearn.metrics._dist_metrics.{name}Distance{bits}" for bits in (32, 64) for name in (
        "Euclidean", "SEuclidean", "Manhattan", "Chebyshev", "Minkowski", "Mahalanobis",
        "Haversine", "Hamming", "Canberra", "BrayCurtis", "Jaccard", "Matching", "Dice",
        "Kulsinski", "RogersTanimoto", "RussellRao", "SokalMichener", "SokalSneath",
    )),
)  # fmt: skip
# Functions a model may hold as a parameter (FunctionTransformer(func=np.log1p)): numpy's
# ufuncs and these few from scipy, all pure arithmetic on arrays.
EXTRA_FUNCTION_PATHS: tuple[str, ...] = tuple(
    f"scipy.special.{name}" for name in ("expit", "logit", "log_expit", "boxcox", "inv_boxcox")
)
PICKLE_PROTOCOL_MARK = b"\x80"
# Bounds on what a file may inflate to, checked on the sizes the archive declares (zipfile
# refuses to read past them): a small file must not become gigabytes in the API process.
MAX_SCHEMA_BYTES = 16 * 1024 * 1024
MAX_UNPACKED_BYTES = 4 * 1024 * 1024 * 1024
MAX_SCHEMA_NODES = 1_000_000


class ModelFileError(ValueError):
    """The file is not a model the registry accepts; the message says why and what to do."""


@dataclass(frozen=True)
class ModelFileInfo:
    digest: str
    size_bytes: int
    types: list[str]


def _resolve(path: str) -> Any:
    module, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError):
        return None  # not in this version of the library: nothing to allow


def _written_name(obj: Any) -> str:
    """The name skops writes for a class or function (it finds the module as pickle does)."""
    module: str = pickle.whichmodule(obj, obj.__name__)  # type: ignore[attr-defined]
    return f"{module}.{obj.__name__}"


@cache
def allowed_classes() -> frozenset[str]:
    resolved = [_resolve(path) for path in EXTRA_CLASS_PATHS]
    scalars = set(np.sctypeDict.values())
    estimators = [cls for _, cls in all_estimators()]
    names = {_written_name(cls) for cls in (*resolved, *scalars, *estimators) if cls is not None}
    return frozenset(names | {"builtins.NoneType"})


@cache
def allowed_functions() -> frozenset[str]:
    ufuncs = [value for value in vars(np).values() if isinstance(value, np.ufunc)]
    extra = [_resolve(path) for path in EXTRA_FUNCTION_PATHS]
    return frozenset(_written_name(f) for f in (*ufuncs, *extra) if f is not None)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_schema(path: Path) -> dict[str, Any]:
    """The parsed schema.json of a file that looks like skops, within the size bounds."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if head[:1] == PICKLE_PROTOCOL_MARK or head[:2] in (b"\x78\x9c", b"\x78\x01", b"\x1f\x8b"):
        raise ModelFileError(
            "this looks like a pickle or joblib file; loading those runs arbitrary code, so they "
            "are refused. Save the model with skops: skops.io.dump(model, 'model.skops')"
        )
    if not zipfile.is_zipfile(path):
        raise ModelFileError("not a skops file; save the model with skops.io.dump(model, path)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            if "schema.json" not in members:
                raise ModelFileError("a zip file without schema.json is not a skops model file")
            if members["schema.json"].file_size > MAX_SCHEMA_BYTES:
                raise ModelFileError(
                    f"schema.json unpacks to {members['schema.json'].file_size:,} bytes, over "
                    f"the {MAX_SCHEMA_BYTES:,} accepted"
                )
            unpacked = sum(info.file_size for info in members.values())
            if unpacked > MAX_UNPACKED_BYTES:
                raise ModelFileError(
                    f"the file unpacks to {unpacked:,} bytes, over the {MAX_UNPACKED_BYTES:,} "
                    f"accepted"
                )
            schema = json.loads(archive.read("schema.json"))
    except (ValueError, RecursionError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"the skops file is corrupt: {type(exc).__name__}: {exc}") from exc
    if not isinstance(schema, dict):
        raise ModelFileError("the skops file is corrupt: schema.json is not a JSON object")
    protocol = schema.get("protocol")
    if isinstance(protocol, bool) or not isinstance(protocol, int):
        raise ModelFileError(
            f"the skops file is corrupt: schema.json's protocol must be an integer, got "
            f"{protocol!r}; save the model again with skops.io.dump"
        )
    return schema


def _node_names(schema: dict[str, Any]) -> dict[str, str]:
    """Every name the schema's nodes use, with the loader that uses it; refuses what we don't
    allow. Walked without recursion: a deeply nested file must not exhaust the stack."""
    names: dict[str, str] = {}
    refused: list[str] = []
    stack: list[Any] = [schema]
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_SCHEMA_NODES:
            raise ModelFileError(f"schema.json has over {MAX_SCHEMA_NODES:,} entries")
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        if "__loader__" not in node:
            continue
        loader, module, cls = node["__loader__"], node.get("__module__"), node.get("__class__")
        if not all(isinstance(part, str) for part in (loader, module, cls)):
            raise ModelFileError(
                "the skops file is corrupt: a node's __loader__, __module__ and __class__ must "
                f"be strings, got {loader!r}, {module!r}, {cls!r}"
            )
        name = f"{module}.{cls}"
        if loader in FUNCTION_LOADERS:
            allowed = name in allowed_functions()
        elif loader in CLASS_LOADERS:
            allowed = name in allowed_classes()
        else:
            raise ModelFileError(
                f"the skops file uses a node kind Flywheel does not load: {loader!r} (for "
                f"{name}); models may hold only estimators, arrays, containers and ufuncs"
            )
        if not allowed:
            refused.append(f"{name} ({loader})")
        names[name] = loader
    if refused:
        raise ModelFileError(
            f"the model needs types or functions outside the allowed list: "
            f"{', '.join(sorted(set(refused)))}; only scikit-learn estimators and the numpy, "
            f"scipy and builtin types they hold are accepted"
        )
    return names


def file_types(path: Path) -> list[str]:
    """Every type and function the file will instantiate or return, sorted; refuses a file
    that names anything outside the allowlists."""
    names = _node_names(_read_schema(path))
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # skops parses a file from outside: any failure means corrupt
        raise ModelFileError(f"the skops file is corrupt: {type(exc).__name__}: {exc}") from exc
    return sorted(set(names) | set(untrusted))


def inspect_file(path: Path) -> ModelFileInfo:
    """Check a candidate model file and describe it; refuses pickle and unexpected types."""
    types = file_types(path)
    return ModelFileInfo(digest=sha256_file(path), size_bytes=path.stat().st_size, types=types)


def save_model(model: Any, path: Path) -> ModelFileInfo:
    sio.dump(model, path)
    return inspect_file(path)


def load_model(path: Path, *, digest: str, types: list[str]) -> Any:
    """Load only the exact bytes that were registered, trusting only the recorded types (and
    checking them against today's allowlist: a file recorded under an older rule is refused)."""
    actual = sha256_file(path)
    if actual != digest:
        raise ModelFileError(
            f"model file digest mismatch: the registry recorded {digest[:12]}…, the file is "
            f"{actual[:12]}…; the artifact was altered or replaced and will not be loaded"
        )
    needed = file_types(path)
    unexpected = sorted(set(needed) - set(types))
    if unexpected:
        raise ModelFileError(f"the model file needs types that were not recorded: {unexpected}")
    trusted = sio.get_untrusted_types(file=path)
    try:
        return sio.load(path, trusted=trusted)
    except Exception as exc:  # vetted, but still a file from outside
        raise ModelFileError(
            f"the skops file could not be loaded: {type(exc).__name__}: {exc}"
        ) from exc
