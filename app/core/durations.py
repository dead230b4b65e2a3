"""Durations as people write them in query strings and rules: 30s, 5m, 1h, 7d, 2w."""

import re
from collections.abc import Sequence
from datetime import timedelta

from app.core.errors import Unprocessable

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
BODY = ("body",)


def parse_duration(text: str, field: str, *, where: Sequence[int | str] = ("query",)) -> timedelta:
    """`field` names the value (dotted for nested body fields); `where` is where it was sent
    (`("body",)`, `("body", "alternatives", 2)`), so an error points at that place."""
    match = _PATTERN.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise Unprocessable(
            f"{field}: {text!r} is not a duration; write a positive number and a unit, "
            "e.g. 30s, 5m, 1h, 7d",
            details={"loc": [*where, *field.split(".")]},
        )
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
