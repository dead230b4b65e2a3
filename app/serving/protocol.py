"""Request and response shapes of the data plane: the Open Inference Protocol (v2) mapped to
and from the predict contract's `dataframe_split`, and the one error shape."""

from dataclasses import dataclass, field
from typing import Any

from app.ml.serving_contract import InputError


def from_v2(payload: Any) -> dict[str, Any]:
    """OIP inputs [{name, shape, datatype, data}] (one per column) as dataframe_split rows."""
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise InputError("an Open Inference Protocol body needs `inputs`: one tensor per column")
    columns, values = [], []
    for tensor in payload["inputs"]:
        if (
            not isinstance(tensor, dict)
            or "name" not in tensor
            or not isinstance(tensor.get("data"), list)
        ):
            raise InputError("each input needs `name` and `data` (a flat list, one value per row)")
        columns.append(str(tensor["name"]))
        values.append(tensor["data"])
    if len({len(v) for v in values}) > 1:
        raise InputError("every input tensor must have the same number of rows")
    return {
        "dataframe_split": {
            "columns": columns,
            "data": [list(row) for row in zip(*values, strict=True)],
        }
    }


def to_v2(body: dict[str, Any], request_id: str) -> dict[str, Any]:
    outputs = [
        {
            "name": "predictions",
            "shape": [len(body["predictions"])],
            "datatype": "BYTES" if any(isinstance(p, str) for p in body["predictions"]) else "FP64",
            "data": body["predictions"],
        }
    ]
    if "probabilities" in body:
        flat = [p for row in body["probabilities"] for p in row]
        outputs.append(
            {
                "name": "probabilities",
                "shape": [len(body["probabilities"]), len(body.get("classes", []))],
                "datatype": "FP64",
                "data": flat,
            }
        )
    return {
        "model_name": body["deployment"],
        "model_version": str(body["model_version"]),
        "id": request_id,
        "outputs": outputs,
    }


@dataclass
class Reply:
    """A data-plane answer before it is written: status, JSON body, headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def error(
    status: int,
    code: str,
    message: str,
    request_id: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    return Reply(
        status,
        error_body(code, message, details),
        {"X-Request-Id": request_id, **(headers or {})},
    )


def unauthorized(message: str, request_id: str = "") -> Reply:
    headers = {"WWW-Authenticate": "Bearer"}
    return error(401, "unauthorized", message, request_id, headers=headers)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}
