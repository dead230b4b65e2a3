"""Change detection over a model's stream of per-prediction errors.

Continuous training learns from a "dynamic" window: the rows since the model's error rate last
changed. Training on rows from before the change teaches the old concept; training on too few
rows after it overfits. Two classic detectors find that point in a stream of 0/1
misclassifications or absolute errors (larger = worse):

- **Page-Hinkley** (Page 1954; Hinkley 1971; as in MOA and river) watches for an *increase* of
  the mean. With x̄_t the running mean since the last alarm it accumulates
  m_t = sum_{i<=t} (x_i - x̄_i - delta) and alarms when m_t - min_{i<=t} m_i > threshold (once
  at least min_instances points were seen). delta is the size of increase that is tolerated,
  threshold trades delay for false alarms; both are in the errors' units, so the defaults
  (delta 0.005, threshold 50, min_instances 30: MOA's and river's) suit 0/1 errors, and absolute
  errors on another scale need their own. Between changes m_t is a random walk with drift
  -delta and step variance var(x), so false alarms come roughly every exp(2 · delta ·
  threshold / var(x)) excursions: measured over 20 seeded stationary streams of 20,000 points
  with the defaults, none at error rates 0.05 and 0.1, 5 in all at 0.2 and 13 at 0.4 (ADWIN:
  none, none, none, 1). Noisier streams want a larger threshold. After an alarm all
  statistics restart. Page-Hinkley
  says *when* to alarm; *where* the increase began is estimated separately, as the
  least-squares (Gaussian maximum-likelihood) single mean-shift split of the points since the
  last restart, restricted to increases. The CUSUM estimate (where m_t last hit its minimum) is
  not used: with a small delta m_t is a random walk with almost no downward drift before the
  change, so its minimum can lie thousands of points too early.
- **ADWIN** (Bifet & Gavaldà, "Learning from time-changing data with adaptive windowing",
  SDM 2007) keeps the longest recent window W in which no split W = W0 · W1 has means that
  differ by more than eps_cut = sqrt(2/m · var_W · ln(2/delta')) + 2/(3m) · ln(2/delta'), with
  m = 1/(1/n0 + 1/n1) and delta' = delta / ln|W|; when one does, the oldest part is dropped until
  none does. It detects increases and decreases, and its false-alarm rate is bounded by delta.

ADWIN here is an exact variant over the stored stream rather than the exponential-histogram
(ADWIN2) one. The errors of a batch job are already in memory, so prefix sums give every
window's and sub-window's exact mean and variance in O(1); ADWIN2 approximates them with merged
buckets in O(log W) memory, which only matters online. The split points examined are those
ADWIN2's buckets would offer: max_buckets cut points per doubling of the distance from the newest
point (dense near the present, sparse in the past), checked every `clock` points (MOA's and
river's 32), so a check is O(max_buckets · log W) and a stream of n points costs
O(n / clock · log n), vectorized — a few hundred thousand points take well under a second. When a
split fires, the oldest grid cell is dropped and the check repeats, as ADWIN2 drops its oldest
bucket; the window start that survives is the estimate of where the change began. The price is
memory O(n) for the prefix sums (the stream itself is O(n) already) and no online updates.

Both detectors are prefix-consistent: the changes found in a prefix of a stream are exactly the
changes found in the whole stream up to that point, as for an online detector, so a backtest that
replays history sees what production would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

Method = Literal["page_hinkley", "adwin"]
METHODS: tuple[Method, ...] = get_args(Method)

PAGE_HINKLEY_DEFAULTS: dict[str, float] = {"delta": 0.005, "threshold": 50.0, "min_instances": 30}
ADWIN_DEFAULTS: dict[str, float] = {
    "delta": 0.002,
    "clock": 32,
    "min_window": 5,
    "grace_period": 10,
    "max_buckets": 5,
}
_PARAMS: dict[Method, dict[str, float]] = {
    "page_hinkley": PAGE_HINKLEY_DEFAULTS,
    "adwin": ADWIN_DEFAULTS,
}


@dataclass(frozen=True)
class Change:
    """One detected change: where the alarm was raised and where the new regime is estimated to
    start (both 0-based positions in the stream, start <= detected_at)."""

    detected_at: int
    start: int


def page_hinkley(
    errors: Sequence[float] | npt.ArrayLike,
    *,
    delta: float = 0.005,
    threshold: float = 50.0,
    min_instances: int = 30,
) -> list[Change]:
    """Page-Hinkley test for an increase of the mean error (see the module docstring)."""
    if not _finite_number(delta) or delta < 0:
        raise ValueError(f"page_hinkley: delta must be a number >= 0, got {delta!r}")
    if not _finite_number(threshold) or threshold <= 0:
        raise ValueError(f"page_hinkley: threshold must be a number > 0, got {threshold!r}")
    min_instances = _positive_int("page_hinkley", "min_instances", min_instances)
    stream = _as_stream(errors)

    changes: list[Change] = []
    segment_start = 0
    count = 0
    mean = 0.0
    cumulative = 0.0
    lowest = 0.0  # m before the first point of a segment is 0
    for i, x in enumerate(stream.tolist()):
        count += 1
        mean += (x - mean) / count
        cumulative += x - mean - delta
        lowest = min(lowest, cumulative)
        if count >= min_instances and cumulative - lowest > threshold:
            start = segment_start + _increase_split(stream[segment_start : i + 1])
            changes.append(Change(detected_at=i, start=start))
            segment_start = i + 1
            count, mean, cumulative, lowest = 0, 0.0, 0.0, 0.0
    return changes


def adwin(
    errors: Sequence[float] | npt.ArrayLike,
    *,
    delta: float = 0.002,
    clock: int = 32,
    min_window: int = 5,
    grace_period: int = 10,
    max_buckets: int = 5,
) -> list[Change]:
    """ADWIN over the stored stream: exact sub-window statistics, ADWIN2's cut-point grid."""
    if not _finite_number(delta) or not 0 < delta < 1:
        raise ValueError(f"adwin: delta must be in (0, 1), got {delta!r}")
    clock = _positive_int("adwin", "clock", clock)
    min_window = _positive_int("adwin", "min_window", min_window)
    grace_period = _positive_int("adwin", "grace_period", grace_period, minimum=0)
    max_buckets = _positive_int("adwin", "max_buckets", max_buckets)
    x = _as_stream(errors)
    n = x.size
    if n == 0:
        return []

    # Shifting by the mean keeps the sum of squares well conditioned for the variance.
    shifted = x - x.mean()
    s1 = np.concatenate(([0.0], np.cumsum(shifted)))
    s2 = np.concatenate(([0.0], np.cumsum(shifted * shifted)))
    offsets = _cut_grid(n, max_buckets)  # sizes of the newer side W1, ascending

    changes: list[Change] = []
    start = 0
    for end in range(clock, n + 1, clock):  # the check after point end - 1 arrived
        detected = False
        while True:
            width = end - start
            if width <= grace_period or width < 2 * min_window:
                break
            lo = int(np.searchsorted(offsets, min_window, side="left"))
            hi = int(np.searchsorted(offsets, width - min_window, side="right"))
            if lo >= hi:
                break
            n1 = offsets[lo:hi]
            n0 = width - n1
            cut = end - n1
            mean_new = (s1[end] - s1[cut]) / n1
            mean_old = (s1[cut] - s1[start]) / n0
            total_mean = (s1[end] - s1[start]) / width
            variance = max((s2[end] - s2[start]) / width - total_mean * total_mean, 0.0)
            log_term = math.log(2.0 * math.log(width) / delta)
            m_recip = 1.0 / n0 + 1.0 / n1
            eps = np.sqrt(2.0 * m_recip * variance * log_term) + (2.0 / 3.0) * m_recip * log_term
            if not bool(np.any(np.abs(mean_old - mean_new) > eps)):
                break
            detected = True
            # Drop the oldest grid cell: the window now starts at the farthest cut point.
            farthest = int(offsets[int(np.searchsorted(offsets, width, side="left")) - 1])
            start = end - farthest
        if detected:
            changes.append(Change(detected_at=end - 1, start=start))
    return changes


def find_changes(
    errors: Sequence[float] | npt.ArrayLike, method: Method = "adwin", **params: Any
) -> list[Change]:
    """Run one detector by name, with its parameters as keywords (as a stored policy has them)."""
    if method not in _PARAMS:
        raise ValueError(f"unknown change detection method {method!r}; use one of {METHODS}")
    unknown = sorted(set(params) - set(_PARAMS[method]))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for {method}; it takes {sorted(_PARAMS[method])}"
        )
    if method == "page_hinkley":
        return page_hinkley(errors, **params)
    return adwin(errors, **params)


def detect(
    errors: Sequence[float] | npt.ArrayLike, method: Method = "adwin", **params: Any
) -> list[int]:
    """Positions at which changes were detected (alarm times, ascending)."""
    return [change.detected_at for change in find_changes(errors, method, **params)]


def last_change(
    errors: Sequence[float] | npt.ArrayLike, method: Method = "adwin", **params: Any
) -> int | None:
    """Position of the most recent alarm, or None; `find_changes` also says where it began."""
    changes = find_changes(errors, method, **params)
    return changes[-1].detected_at if changes else None


def _increase_split(segment: npt.NDArray[np.float64]) -> int:
    """Where in `segment` a single upward mean shift fits best (0 if no split raises the mean).

    Maximizes k (n - k) / n * (mean_after - mean_before)^2 over splits with mean_after larger:
    the reduction in squared error from fitting two means instead of one.
    """
    n = segment.size
    if n < 2:
        return 0
    k = np.arange(1, n, dtype=np.float64)
    prefix = np.cumsum(segment - segment.mean())[:-1]  # total is 0 after centering
    before = prefix / k
    after = -prefix / (n - k)
    gain = np.where(after > before, k * (n - k) / n * (after - before) ** 2, -1.0)
    best = int(np.argmax(gain))
    return best + 1 if gain[best] > 0 else 0


def _cut_grid(n: int, max_buckets: int) -> npt.NDArray[np.int64]:
    """Distances from the newest point at which ADWIN2's buckets would put cut points."""
    sizes: list[int] = []
    total = 0
    level = 0
    while total < n:
        for _ in range(max_buckets):
            total += 1 << level
            sizes.append(total)
        level += 1
    return np.asarray(sizes, dtype=np.int64)


def _as_stream(errors: Sequence[float] | npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The errors as a 1-D float array; NaN or infinity is a caller error, not a change."""
    try:
        x = np.asarray(errors, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"errors must be numbers: {exc}") from exc
    if x.ndim != 1:
        raise ValueError(f"errors must be a 1-D sequence, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise ValueError(f"errors must be finite; position {bad} is {x[bad]}")
    return x


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(method: str, name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{method}: {name} must be an integer >= {minimum}, got {value!r}")
    if not float(value).is_integer() or value < minimum:
        raise ValueError(f"{method}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
