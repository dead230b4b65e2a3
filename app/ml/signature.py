"""Model signatures: the input columns (name, type, order, nullability) and the output kind.

A signature is a plain dict so it can be stored as JSON and shipped in serving bundles:
{"inputs": [{"name", "type", "nullable"}], "output": {"kind": "classification" | "regression",
"classes": [...]}}.
"""

from collections.abc import Sequence
from typing import Any, Literal

import pandas as pd

Verdict = Literal["identical", "compatible", "breaking"]
NUMERIC = {"integer", "float"}
# A value of each column type as a client sends it in JSON (datetimes as ISO text).
_PROBE_VALUES: dict[str, Any] = {
    "integer": 0,
    "float": 0.0,
    "boolean": False,
    "string": "",
    "datetime": "2000-01-01T00:00:00",
}


def output_of(model: Any) -> dict[str, Any]:
    classes = getattr(model, "classes_", None)
    if classes is not None and hasattr(model, "predict"):
        return {
            "kind": "classification",
            "classes": [c.item() if hasattr(c, "item") else c for c in classes],
            "probabilities": hasattr(model, "predict_proba"),
        }
    return {"kind": "regression"}


def from_schema(
    columns: Sequence[dict[str, Any]], *, exclude: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Input columns from a dataset version's schema, without the target (and any excluded)."""
    return [
        {"name": c["name"], "type": c["type"], "nullable": bool(c.get("nullable", False))}
        for c in columns
        if c["name"] not in exclude
    ]


def from_model(model: Any) -> list[dict[str, Any]] | None:
    """A fallback when no training data is linked: the names the estimator was fitted on."""
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        return None
    return [{"name": str(n), "type": "float", "nullable": False} for n in names]


def conform(frame: pd.DataFrame, inputs: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The signature's input columns typed as the signature types them.

    Rows read back from JSON (prediction logs) carry datetimes as text and integers that may
    have become floats; typed again, the table a retrain learns from has the same column types
    as the one the served version was trained on, so the retrained version's signature (and
    its preprocessing: a timestamp is not a category) stays the same. Datetimes are in UTC, so
    logged rows and the original training set can be put in one table. Values that do not fit
    the type become missing rather than changing the column's type.
    """
    typed = frame.copy()
    for column in inputs:
        name = column["name"]
        if name in typed.columns:
            typed[name] = _as_type(typed[name], column["type"])
    return typed


def _as_type(series: "pd.Series[Any]", kind: str) -> "pd.Series[Any]":
    if kind == "datetime":
        if pd.api.types.is_datetime64_any_dtype(series.dtype):
            return pd.to_datetime(series, utc=True)
        return pd.to_datetime(series, utc=True, errors="coerce", format="mixed")
    if kind in NUMERIC:
        numbers = pd.to_numeric(series, errors="coerce")
        present = numbers.dropna()
        if kind == "integer" and bool((present == present.round()).all()):
            return numbers.astype("Int64") if numbers.isna().any() else numbers.astype("int64")
        return numbers.astype("float64")
    if kind == "boolean":
        flags = series.map(lambda v: v if isinstance(v, bool) else None)
        return flags.astype("boolean") if flags.isna().any() else flags.astype(bool)
    return series


def probe_rows(inputs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One request row of the signature's types, to check a model answers what it promises
    when no training rows are linked."""
    return [{c["name"]: _PROBE_VALUES[c["type"]] for c in inputs}]


def missing_features(model: Any, inputs: Sequence[dict[str, Any]]) -> list[str]:
    """Columns the fitted model expects that the signature does not provide."""
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        return []
    provided = {c["name"] for c in inputs}
    return [str(n) for n in names if str(n) not in provided]


def compare(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """How a new signature relates to the current one: identical, compatible or breaking."""
    changes: list[dict[str, Any]] = []
    breaking = False
    old_cols = {c["name"]: c for c in old["inputs"]}
    new_cols = {c["name"]: c for c in new["inputs"]}
    for name, col in old_cols.items():
        if name not in new_cols:
            changes.append({"column": name, "change": "removed"})
            breaking = True
            continue
        other = new_cols[name]
        if other["type"] != col["type"]:
            widened = col["type"] == "integer" and other["type"] == "float"
            changes.append(
                {"column": name, "change": "type", "from": col["type"], "to": other["type"]}
            )
            breaking = breaking or not widened
        if col["nullable"] and not other["nullable"]:
            changes.append({"column": name, "change": "now required"})
            breaking = True
        elif not col["nullable"] and other["nullable"]:
            changes.append({"column": name, "change": "now optional"})
    for name, col in new_cols.items():
        if name not in old_cols:
            changes.append({"column": name, "change": "added", "optional": col["nullable"]})
            breaking = breaking or not col["nullable"]
    if [c["name"] for c in old["inputs"]] != [c["name"] for c in new["inputs"]] and not changes:
        changes.append({"change": "column order"})
    old_out, new_out = old.get("output", {}), new.get("output", {})
    if old_out.get("kind") != new_out.get("kind"):
        changes.append(
            {"change": "output kind", "from": old_out.get("kind"), "to": new_out.get("kind")}
        )
        breaking = True
    elif old_out.get("classes") != new_out.get("classes"):
        changes.append(
            {"change": "classes", "from": old_out.get("classes"), "to": new_out.get("classes")}
        )
        breaking = True
    verdict: Verdict = "breaking" if breaking else ("compatible" if changes else "identical")
    return {"verdict": verdict, "changes": changes}
