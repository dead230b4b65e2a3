"""The predict contract shared by the gateway's replicas and serving bundles.

Requests carry rows as a list of objects (`{"rows": [{...}]}`, alias `instances`) or a
pandas-style `{"dataframe_split": {"columns": [...], "data": [[...]]}}`; they are checked
against the model's signature and turned into a frame in the signature's column order.
This module imports only numpy and pandas so a bundle can ship it unchanged.
"""

import datetime as dt
import math
from typing import Any

import numpy as np
import pandas as pd

MAX_ROWS = 10_000


class InputError(ValueError):
    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


def _rows_from_payload(payload: Any) -> tuple[list[str] | None, list[Any]]:
    if not isinstance(payload, dict):
        raise InputError("the body must be a JSON object with `rows` or `dataframe_split`")
    if "dataframe_split" in payload:
        split = payload["dataframe_split"]
        if not isinstance(split, dict) or not isinstance(split.get("columns"), list):
            raise InputError(
                "dataframe_split needs `columns` (a list) and `data` (a list of lists)"
            )
        data = split.get("data")
        if not isinstance(data, list) or not all(isinstance(r, list) for r in data):
            raise InputError("dataframe_split.data must be a list of lists")
        columns = [str(c) for c in split["columns"]]
        for i, row in enumerate(data):
            if len(row) != len(columns):
                raise InputError(
                    f"dataframe_split.data[{i}] has {len(row)} values for {len(columns)} columns",
                    {"row": i},
                )
        return columns, data
    rows = payload.get("rows", payload.get("instances"))
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError("`rows` must be a list of objects, one per row, keyed by column name")
    return None, rows


def _check_value(value: Any, kind: str) -> bool:
    if value is None:
        return True
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if kind == "float":
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "datetime":  # JSON sends text; rows read from a table carry Timestamps
        return isinstance(value, str | dt.date | np.datetime64)
    return isinstance(value, str)


def check_payload(payload: Any, signature: dict[str, Any]) -> tuple[list[str] | None, list[Any]]:
    """Validate rows against the signature on the plain JSON values, without building a
    frame: the gateway checks every request this way and leaves the frame to the replica."""
    columns, rows = _rows_from_payload(payload)
    if not rows:
        raise InputError("send at least one row")
    if len(rows) > MAX_ROWS:
        raise InputError(f"at most {MAX_ROWS} rows per request; got {len(rows)}")
    inputs = signature["inputs"]
    expected = [c["name"] for c in inputs]
    present = set(columns) if columns is not None else set().union(*(r.keys() for r in rows))
    unknown = sorted(present - set(expected))
    if unknown:
        raise InputError(
            f"unknown column(s) {unknown}; the model takes {expected}", {"unknown_columns": unknown}
        )
    for column in inputs:
        name, kind = column["name"], column["type"]
        if name not in present:
            if not column["nullable"]:
                raise InputError(f"missing required column {name!r}", {"column": name})
            continue
        if columns is None:
            values = [row.get(name) for row in rows]
        else:
            position = columns.index(name)
            values = [row[position] for row in rows]
        for index, value in enumerate(values):
            if value.__class__ is float and kind == "float" and math.isfinite(value):
                continue  # the common case, checked without a call
            if isinstance(value, float) and math.isnan(value):
                value = None
            elif kind == "datetime" and _iso(value) is None:
                value = None  # NaT
            if value is None and not column["nullable"]:
                raise InputError(
                    f"column {name!r} is required but row {index} has no value",
                    {"column": name, "row": index},
                )
            if not _check_value(value, kind):
                raise InputError(
                    f"column {name!r} expects {kind} values; row {index} has {value!r}",
                    {"column": name, "row": index, "expected": kind},
                )
    return columns, rows


def _column_arrays(payload: Any, signature: dict[str, Any]) -> tuple[list[Any], int]:
    """The checked rows as one array per signature column (in its order), and the row count."""
    columns, rows = check_payload(payload, signature)
    inputs = signature["inputs"]
    if _only_floats(signature):  # one conversion for the whole table, not one per column
        table = _float_table(columns, rows, [c["name"] for c in inputs])
        return list(table.T), len(rows)
    if columns is None:
        values = {c["name"]: [row.get(c["name"]) for row in rows] for c in inputs}
    else:
        position = {name: index for index, name in enumerate(columns)}
        values = {
            c["name"]: [row[position[c["name"]]] for row in rows]
            if c["name"] in position
            else [None] * len(rows)
            for c in inputs
        }
    return [_array(values[c["name"]], c["type"]) for c in inputs], len(rows)


def _only_floats(signature: dict[str, Any]) -> bool:
    return all(c["type"] == "float" for c in signature["inputs"])


def _float_table(
    columns: list[str] | None, rows: list[Any], names: list[str]
) -> np.ndarray[Any, Any]:
    """Checked float rows as a (rows x columns) float64 matrix; numpy reads None as NaN."""
    if columns is None:
        table = [[row.get(name) for name in names] for row in rows]
    elif columns == names:
        table = rows
    else:
        position = {name: index for index, name in enumerate(columns)}
        table = [[row[position[n]] if n in position else None for n in names] for row in rows]
    return np.array(table, dtype=np.float64).reshape(len(rows), len(names))


def _all_float(arrays: list[Any]) -> bool:
    return all(isinstance(a, np.ndarray) and a.dtype == np.float64 for a in arrays)


def frame_from_payload(payload: Any, signature: dict[str, Any]) -> pd.DataFrame:
    """One array per column with the signature's dtype, then one frame: per-column pandas
    conversions cost ~0.7 ms a column, which dominated single-row predictions."""
    return _frame(*_column_arrays(payload, signature), signature)


def matrix_from_payload(payload: Any, signature: dict[str, Any]) -> np.ndarray[Any, Any] | None:
    """The rows as one float matrix in the signature's column order when every column is a
    number (None otherwise)."""
    arrays, _ = _column_arrays(payload, signature)
    return np.column_stack(arrays) if _all_float(arrays) else None


def features_from_payload(
    payload: Any, signature: dict[str, Any], *, matrix: bool
) -> pd.DataFrame | np.ndarray[Any, Any]:
    """Checked once: a plain float matrix when `matrix` is allowed (a model shown to answer
    it as it answers the frame) and every column is a number, the frame otherwise. Skipping
    the frame is the larger part of a one-row prediction."""
    if matrix and _only_floats(signature):
        columns, rows = check_payload(payload, signature)
        return _float_table(columns, rows, [c["name"] for c in signature["inputs"]])
    arrays, count = _column_arrays(payload, signature)
    if matrix and _all_float(arrays):
        return np.column_stack(arrays)
    return _frame(arrays, count, signature)


def _frame(arrays: list[Any], count: int, signature: dict[str, Any]) -> pd.DataFrame:
    # plain object labels: models check feature names on every call, and iterating pandas 3's
    # Arrow-backed string index costs more than the prediction itself
    names = pd.Index([c["name"] for c in signature["inputs"]], dtype=object)
    if _all_float(arrays):
        return pd.DataFrame(np.column_stack(arrays), columns=names)  # one block: fastest
    frame = pd.DataFrame(dict(zip(names, arrays, strict=True)), columns=names)
    frame.index = pd.RangeIndex(count)
    return frame


def _array(values: list[Any], kind: str) -> Any:
    missing = any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values)
    if kind == "float":
        return np.array([np.nan if v is None else v for v in values], dtype="float64")
    if kind == "integer":
        if missing:
            return np.array([np.nan if v is None else v for v in values], dtype="float64")
        return np.array(values, dtype="int64")
    if kind == "boolean":
        return pd.array(values, dtype="boolean") if missing else np.array(values, dtype=bool)
    if kind == "datetime":
        values = [_iso(v) for v in values]
    # object dtype with None, as the model saw strings in training (not pandas' str dtype)
    return pd.Series([None if v is None else v for v in values], dtype=object)


def _iso(value: Any) -> Any:
    """A time as the ISO text a JSON request carries, so the model sees one representation
    whether the row came over HTTP or from a table (as the stored background rows do)."""
    if isinstance(value, np.datetime64):
        value = pd.Timestamp(value)
    if value is pd.NaT:  # pandas' missing time (numpy's becomes it above)
        return None
    return value.isoformat() if isinstance(value, dt.date) else value


def _plain(values: np.ndarray) -> list[Any]:
    return [v.item() if hasattr(v, "item") else v for v in values.tolist()]


# Classifiers whose predict() is the argmax of predict_proba(): one call answers both.
_ARGMAX_CLASSIFIERS = frozenset(
    {
        "LogisticRegression",
        "DecisionTreeClassifier",
        "ExtraTreeClassifier",
        "RandomForestClassifier",
        "ExtraTreesClassifier",
        "GradientBoostingClassifier",
        "HistGradientBoostingClassifier",
        "GaussianNB",
    }
)


def _final_step(model: Any) -> Any:
    steps = getattr(model, "steps", None)
    return _final_step(steps[-1][1]) if steps else model


def predict(
    model: Any, frame: pd.DataFrame | np.ndarray[Any, Any], signature: dict[str, Any]
) -> dict[str, Any]:
    output = signature.get("output", {})
    if output.get("kind") == "classification" and hasattr(model, "predict_proba"):
        probabilities = np.asarray(model.predict_proba(frame), dtype=float)
        classes = np.asarray(model.classes_)
        if type(_final_step(model)).__name__ in _ARGMAX_CLASSIFIERS:
            predictions = classes[np.argmax(probabilities, axis=1)]
        else:
            predictions = np.asarray(model.predict(frame))
        return {
            "predictions": _plain(predictions),
            "probabilities": probabilities.round(10).tolist(),
            "classes": _plain(classes),
        }
    return {"predictions": _plain(np.asarray(model.predict(frame)))}
