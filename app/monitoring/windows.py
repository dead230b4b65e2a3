"""Time windows of monitoring queries: a range cut into equal buckets."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from app.core.db import utcnow
from app.core.durations import parse_duration
from app.core.errors import Unprocessable

MAX_BUCKETS = 2000


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    step: timedelta

    def bucket(self, moment: datetime) -> datetime:
        return self.start + self.step * ((moment - self.start) // self.step)


def window(
    start: datetime | None,
    end: datetime | None,
    span: str,
    step: str,
    minimum_step: timedelta = timedelta(0),
) -> Window:
    """`from`/`to` when given, else the last `span`; `step` cuts it into buckets."""
    end = end or utcnow()
    start = start or end - parse_duration(span, "window")
    width = parse_duration(step, "step")
    if start >= end:
        raise Unprocessable("`from` must be before `to`", details={"loc": ["query", "from"]})
    misaligned = bool(minimum_step) and (width < minimum_step or bool(width % minimum_step))
    if misaligned:
        raise Unprocessable(
            f"step must be a multiple of {int(minimum_step.total_seconds())}s: the data is "
            "stored in buckets of that size",
            details={"loc": ["query", "step"]},
        )
    if (end - start) / width > MAX_BUCKETS:
        raise Unprocessable(
            f"{(end - start) // width} buckets is too many (at most {MAX_BUCKETS}); "
            "widen the step or narrow the range",
            details={"loc": ["query", "step"]},
        )
    return Window(start, end, width)
