import pandas as pd
import pytest

from app.ml.profile import infer_schema
from app.ml.signature import compare, conform


def sig(
    *cols: tuple[str, str, bool], kind: str = "classification", classes: list[int] | None = None
) -> dict:
    output = {"kind": kind} | ({"classes": classes or [0, 1]} if kind == "classification" else {})
    return {
        "inputs": [{"name": n, "type": t, "nullable": nl} for n, t, nl in cols],
        "output": output,
    }


BASE = sig(("age", "integer", False), ("city", "string", False))


@pytest.mark.parametrize(
    ("new", "verdict"),
    [
        (BASE, "identical"),
        (sig(("city", "string", False), ("age", "integer", False)), "compatible"),
        (
            sig(("age", "integer", False), ("city", "string", False), ("x", "float", True)),
            "compatible",
        ),
        (
            sig(("age", "integer", False), ("city", "string", False), ("x", "float", False)),
            "breaking",
        ),
        (sig(("age", "integer", False)), "breaking"),
        (sig(("age", "float", False), ("city", "string", False)), "compatible"),
        (sig(("age", "string", False), ("city", "string", False)), "breaking"),
        (sig(("age", "integer", True), ("city", "string", False)), "compatible"),
        (sig(("age", "integer", False), ("city", "string", False), kind="regression"), "breaking"),
        (sig(("age", "integer", False), ("city", "string", False), classes=[0, 1, 2]), "breaking"),
    ],
)
def test_verdicts(new: dict, verdict: str) -> None:
    assert compare(BASE, new)["verdict"] == verdict


def test_required_becomes_breaking_when_old_was_optional() -> None:
    old = sig(("age", "integer", True))
    result = compare(old, sig(("age", "integer", False)))
    assert result == {
        "verdict": "breaking",
        "changes": [{"column": "age", "change": "now required"}],
    }


def test_rows_read_back_from_json_get_the_signature_types_again() -> None:
    """Logged JSON has datetimes as text and integers that may have turned into floats; the
    profile of the conformed table types every column as the signature does."""
    logged = pd.DataFrame(
        {
            "ts": ["2026-11-01T00:00:00+00:00", "2026-11-01 01:00:00Z", None],
            "age": [30.0, 41.0, None],
            "income": ["1.5", 2, "n/a"],
            "member": [True, None, False],
            "city": ["Paris", "Lyon", None],
            "churned": [0, 1, 0],  # not an input: left as it is
        }
    )
    inputs = [
        {"name": "ts", "type": "datetime", "nullable": False},
        {"name": "age", "type": "integer", "nullable": False},
        {"name": "income", "type": "float", "nullable": False},
        {"name": "member", "type": "boolean", "nullable": False},
        {"name": "city", "type": "string", "nullable": False},
        {"name": "absent", "type": "float", "nullable": True},
    ]
    typed = conform(logged, inputs)
    schema = {c["name"]: c["type"] for c in infer_schema(typed)}
    assert schema == {
        "ts": "datetime",
        "age": "integer",
        "income": "float",
        "member": "boolean",
        "city": "string",
        "churned": "integer",
    }
    assert typed["ts"][1] == pd.Timestamp("2026-11-01 01:00", tz="UTC")
    assert typed["income"].tolist()[:2] == [1.5, 2.0] and pd.isna(typed["income"][2])
    assert logged["ts"][0] == "2026-11-01T00:00:00+00:00"  # the input is not changed
    # a naive datetime column (an original training set) joins the logged one in UTC
    original = pd.DataFrame({"ts": pd.date_range("2026-10-01", periods=2, freq="h")})
    both = pd.concat([conform(original, inputs), typed[["ts"]]])
    assert pd.api.types.is_datetime64_any_dtype(both["ts"])
