"""What a feedback label may be: one of the served model's classes, or a finite number for a
regressor. Checked when feedback arrives; quality reports use the same rules to leave out rows
stored before the check existed, so one bad row never breaks a report or an alert."""

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_NO_MATCH = object()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _same(label: Any, cls: Any) -> bool:
    if isinstance(label, bool) or isinstance(cls, bool):
        return type(label) is type(cls) and label == cls
    if _number(label) and _number(cls):
        return bool(label == cls)
    if isinstance(label, str) or isinstance(cls, str):  # "1" for class 1, 1 for class "1"
        return isinstance(label, str | int | float) and str(label) == str(cls)
    return False


@dataclass(frozen=True)
class LabelKind:
    """What the models that answered accept as ground truth. `classes` None with `numbers`
    False never happens: an unknown output kind is no LabelKind at all (anything goes)."""

    classes: tuple[Any, ...] | None
    numbers: bool

    def canonical(self, label: Any) -> Any:
        """The label as the model names it (1 for 1.0 or "1" when the classes are [0, 1]),
        or _NO_MATCH."""
        if self.classes is not None:
            for cls in self.classes:
                if _same(label, cls):
                    return cls
        if self.numbers and _number(label):
            return label
        return _NO_MATCH

    def accepts(self, label: Any) -> bool:
        return self.canonical(label) is not _NO_MATCH

    def problem(self, label: Any) -> str:
        shown = repr(label) if not isinstance(label, str) else f"{label!r}"
        if self.classes is not None and self.numbers:
            return (
                f"{shown} is neither one of the model's classes {list(self.classes)} nor a number"
            )
        if self.classes is not None:
            return f"{shown} is not one of the model's classes {list(self.classes)}"
        return f"{shown} is not a number; the model is a regressor"


def kind_of(outputs: Iterable[dict[str, Any]]) -> LabelKind | None:
    """From the `signature.output` of every version that may have answered; None when one of
    them does not say what it predicts (nothing can be checked then)."""
    classes: list[Any] = []
    numbers = False
    seen = False
    for output in outputs:
        seen = True
        if output.get("kind") == "regression":
            numbers = True
        elif output.get("kind") == "classification" and output.get("classes"):
            classes.extend(c for c in output["classes"] if not any(_same(c, k) for k in classes))
        else:
            return None
    if not seen:
        return None
    return LabelKind(tuple(classes) if classes else None, numbers)
