"""The predict contract shared by the gateway's replicas and serving bundles.

Requests carry rows as a list of objects (`{"rows": [{...}]}`, alias `instances`) or a
pandas-style `{"dataframe_split": {"columns": [...], "data": [[...]]}}`; they are checked
against the model's signature and turned into a frame in the signature's column order.
This module imports only numpy and pandas so a bundle can ship it unchanged.
"""

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
        position = columns.index(name) if columns is not None else None
        for index, row in enumerate(rows):
            value = row[position] if position is not None else row.get(name)
            if isinstance(value, float) and math.isnan(value):
                value = None
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


def frame_from_payload(payload: Any, signature: dict[str, Any]) -> pd.DataFrame:
    columns, rows = check_payload(payload, signature)
    if columns is None:
        frame = pd.DataFrame.from_records(rows)
    else:
        frame = pd.DataFrame(rows, columns=columns)
    for column in signature["inputs"]:
        name = column["name"]
        if name not in frame.columns:
            frame[name] = None
        frame[name] = _coerce(frame[name], column["type"])
    return frame[[c["name"] for c in signature["inputs"]]]


def _coerce(series: pd.Series, kind: str) -> pd.Series:
    if kind == "float":
        return pd.to_numeric(series, errors="coerce").astype("float64")
    if kind == "integer":
        numbers = pd.to_numeric(series, errors="coerce")
        return numbers.astype("int64") if not numbers.isna().any() else numbers.astype("float64")
    if kind == "boolean":
        return series.astype("boolean") if series.isna().any() else series.astype(bool)
    return series.astype(object).where(series.notna(), None)


def _plain(values: np.ndarray) -> list[Any]:
    return [v.item() if hasattr(v, "item") else v for v in values.tolist()]


def predict(model: Any, frame: pd.DataFrame, signature: dict[str, Any]) -> dict[str, Any]:
    output = signature.get("output", {})
    result: dict[str, Any] = {"predictions": _plain(np.asarray(model.predict(frame)))}
    if output.get("kind") == "classification" and hasattr(model, "predict_proba"):
        probabilities = np.asarray(model.predict_proba(frame), dtype=float)
        result["probabilities"] = probabilities.round(10).tolist()
        result["classes"] = _plain(np.asarray(model.classes_))
    return result
