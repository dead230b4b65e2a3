import pytest

from app.ml.signature import compare


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
