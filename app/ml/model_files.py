"""Model files: saved with skops, never pickle; verified by digest and type list when loaded.

A pickle (or joblib) file runs arbitrary code when loaded, so the registry refuses it. A skops
file declares every type it needs; we record that list when the file is registered and, when
loading, refuse a file whose digest or needed types differ from what was recorded.
"""

import hashlib
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import skops.io as sio

ALLOWED_MODULE_PREFIXES: tuple[str, ...] = (
    "sklearn.",
    "numpy.",
    "scipy.",
    "pandas.",
    "collections.",
)
SAFE_BUILTINS = frozenset(
    f"builtins.{name}"
    for name in (
        "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
        "int", "float", "complex", "bool", "NoneType", "slice", "range", "type", "object",
    )
)  # fmt: skip
PICKLE_PROTOCOL_MARK = b"\x80"


class ModelFileError(ValueError):
    """The file is not a model the registry accepts; the message says why and what to do."""


@dataclass(frozen=True)
class ModelFileInfo:
    digest: str
    size_bytes: int
    types: list[str]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _refuse_non_skops(path: Path) -> None:
    with path.open("rb") as handle:
        head = handle.read(4)
    if head[:1] == PICKLE_PROTOCOL_MARK or head[:2] in (b"\x78\x9c", b"\x78\x01", b"\x1f\x8b"):
        raise ModelFileError(
            "this looks like a pickle or joblib file; loading those runs arbitrary code, so they "
            "are refused. Save the model with skops: skops.io.dump(model, 'model.skops')"
        )
    if not zipfile.is_zipfile(path):
        raise ModelFileError("not a skops file; save the model with skops.io.dump(model, path)")
    with zipfile.ZipFile(path) as archive:
        if "schema.json" not in archive.namelist():
            raise ModelFileError("a zip file without schema.json is not a skops model file")


def _schema_types(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        module, cls = node.get("__module__"), node.get("__class__")
        if isinstance(module, str) and isinstance(cls, str):
            yield f"{module}.{cls}"
        for value in node.values():
            yield from _schema_types(value)
    elif isinstance(node, list):
        for item in node:
            yield from _schema_types(item)


def file_types(path: Path) -> list[str]:
    """Every type and function the file will instantiate or call, sorted."""
    _refuse_non_skops(path)
    try:
        with zipfile.ZipFile(path) as archive:
            schema = json.loads(archive.read("schema.json"))
        untrusted = sio.get_untrusted_types(file=path)
    except (ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"the skops file is corrupt: {exc}") from exc
    return sorted(set(_schema_types(schema)) | set(untrusted))


def disallowed_types(types: Iterable[str], extra_prefixes: Iterable[str] = ()) -> list[str]:
    prefixes = ALLOWED_MODULE_PREFIXES + tuple(extra_prefixes)
    return sorted(t for t in types if t not in SAFE_BUILTINS and not t.startswith(prefixes))


def inspect_file(path: Path, extra_prefixes: Iterable[str] = ()) -> ModelFileInfo:
    """Check a candidate model file and describe it; refuses pickle and unexpected types."""
    types = file_types(path)
    refused = disallowed_types(types, extra_prefixes)
    if refused:
        raise ModelFileError(
            f"the model needs types outside the allowed libraries: {', '.join(refused)}; only "
            f"scikit-learn, numpy, scipy and pandas types are accepted"
        )
    return ModelFileInfo(digest=sha256_file(path), size_bytes=path.stat().st_size, types=types)


def save_model(model: Any, path: Path) -> ModelFileInfo:
    sio.dump(model, path)
    return ModelFileInfo(
        digest=sha256_file(path), size_bytes=path.stat().st_size, types=file_types(path)
    )


def load_model(path: Path, *, digest: str, types: list[str]) -> Any:
    """Load only the exact bytes that were registered, trusting only the recorded types."""
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
    trusted = [t for t in sio.get_untrusted_types(file=path) if t in types]
    return sio.load(path, trusted=trusted)
