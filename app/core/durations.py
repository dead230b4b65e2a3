"""Durations as people write them in query strings and rules: 30s, 5m, 1h, 7d, 2w."""

import re
from datetime import timedelta

from app.core.errors import Unprocessable

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str, field: str) -> timedelta:
    match = _PATTERN.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise Unprocessable(
            f"{field}: {text!r} is not a duration; write a positive number and a unit, "
            "e.g. 30s, 5m, 1h, 7d",
            details={"loc": ["query", field]},
        )
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
