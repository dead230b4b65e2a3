"""What a feedback label may be, from the served versions' signature outputs."""

import math
from typing import Any

import pytest

from app.monitoring.labels import kind_of

BINARY = {"kind": "classification", "classes": [0, 1]}
REGRESSION = {"kind": "regression"}


@pytest.mark.parametrize(("label", "canonical"), [(1, 1), (1.0, 1), ("0", 0), (0, 0)])
def test_a_class_is_accepted_in_any_spelling_and_stored_as_the_model_names_it(
    label: Any, canonical: Any
) -> None:
    kind = kind_of([BINARY])
    assert kind is not None and kind.accepts(label)
    assert kind.canonical(label) == canonical and type(kind.canonical(label)) is int


@pytest.mark.parametrize("label", [7, "yes", 1.5, True, None, [1], "1.0"])
def test_anything_else_is_not_a_class(label: Any) -> None:
    kind = kind_of([BINARY])
    assert kind is not None and not kind.accepts(label)
    assert "[0, 1]" in kind.problem(label)


@pytest.mark.parametrize("label", ["3.2", "yes", True, math.nan, math.inf, None])
def test_a_regressor_takes_finite_numbers_only(label: Any) -> None:
    kind = kind_of([REGRESSION])
    assert kind is not None and kind.accepts(2) and kind.accepts(-0.5)
    assert not kind.accepts(label) and "not a number" in kind.problem(label)


def test_string_classes_and_several_versions() -> None:
    kind = kind_of([{"kind": "classification", "classes": ["no", "yes"]}, BINARY])
    assert kind is not None
    assert kind.canonical("yes") == "yes" and kind.canonical(1) == 1 and not kind.accepts("maybe")


@pytest.mark.parametrize("outputs", [[], [{}], [BINARY, {}], [{"kind": "classification"}]])
def test_nothing_is_checked_when_a_version_does_not_say_what_it_predicts(
    outputs: list[dict[str, Any]],
) -> None:
    assert kind_of(outputs) is None
