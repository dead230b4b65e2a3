"""The numeric side of drift: a reference distribution rebuilt from a stored column profile
(piecewise-linear CDF through the quantiles and the cumulative histogram at every bin edge,
with point masses where quantiles tie, and a step CDF for small-range integers), and the
statistics computed exactly against it in one sorted pass: Kolmogorov-Smirnov, Wasserstein,
and the counts per reference bin."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.api.extensions import ExtensionArray
from scipy import stats  # type: ignore[import-untyped, unused-ignore]

INTEGER_SPAN = 10_000  # integer columns up to this range get a step (lattice) reference CDF

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]
Values: TypeAlias = "Sequence[Any] | npt.NDArray[Any] | pd.Series[Any] | ExtensionArray"


@dataclass(frozen=True)
class NumericReference:
    """A numeric column profile, unpacked once: histogram and the CDF knots.

    The CDF is piecewise linear between knots `x`; at a knot it jumps from `lo` = P(X < x)
    to `hi` = P(X <= x) (equal unless the value carries a point mass).
    """

    n: int
    nulls: int
    std: float | None
    edges: FloatArray
    counts: IntArray
    x: FloatArray
    lo: FloatArray
    hi: FloatArray


def numeric_reference(profile: Mapping[str, Any]) -> NumericReference:
    n, nulls = int(profile["count"]), int(profile.get("nulls") or 0)
    empty = np.empty(0)
    if n == 0:
        return NumericReference(0, nulls, None, empty, np.empty(0, np.int64), empty, empty, empty)
    quantiles, histogram = profile["quantiles"], profile["histogram"]
    probs = np.asarray(quantiles["probs"], dtype=np.float64)
    values = np.array([np.nan if v is None else v for v in quantiles["values"]], np.float64)
    edges = np.asarray(histogram["edges"], dtype=np.float64)
    counts = np.asarray(histogram["counts"], dtype=np.int64)
    # P(X < edge) for every edge but the last, whose bin is closed: P(X <= max) = 1.
    below = np.concatenate([[0], np.cumsum(counts)]) / max(int(counts.sum()), 1)
    xs, ps = np.concatenate([values, edges]), np.concatenate([probs, below])
    keep = np.isfinite(xs) & np.isfinite(ps)
    xs, ps = xs[keep], ps[keep]
    if xs.size == 0:
        raise ValueError("the reference profile has no finite quantiles or histogram edges")
    order = np.lexsort((ps, xs))  # by value, then probability
    xs, ps = xs[order], ps[order]
    x, first = np.unique(xs, return_index=True)
    last = np.append(first[1:], xs.size) - 1
    # Quantile interpolation and histogram counts disagree by ~1/n: make the curve monotone.
    steps = np.clip(np.maximum.accumulate(np.column_stack([ps[first], ps[last]]).ravel()), 0, 1)
    lo, hi = steps[0::2].copy(), steps[1::2].copy()
    lo[0], hi[-1] = 0.0, 1.0  # nothing below the minimum, nothing above the maximum
    if profile.get("type") == "integer" and x[-1] - x[0] <= INTEGER_SPAN:
        x, lo, hi = integer_lattice(x, lo, hi)
    std = profile.get("std")
    scale = None if std is None else float(std)
    return NumericReference(n, nulls, scale, edges, counts, x, lo, hi)


def integer_lattice(
    x: FloatArray, lo: FloatArray, hi: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Integer data has its mass on the integers, not spread between knots: a step at every
    integer k up to P(X <= k).

    That is exact where a histogram edge falls inside (k, k + 1). Elsewhere a quantile at k
    sits somewhere inside k's block of the sorted data, so the curve at k + 1/2, halfway to
    the next block, estimates it without the half-step bias of linear interpolation.
    """
    lattice = np.arange(x[0], x[-1] + 1)
    xp, fp = np.repeat(x, 2), np.column_stack([lo, hi]).ravel()
    at_most = np.interp(lattice + 0.5, xp, fp)  # P(X <= k)
    between = np.flatnonzero(x != np.floor(x))  # a histogram edge inside (k, k + 1): exact
    at_most[(np.floor(x[between]) - x[0]).astype(np.intp)] = lo[between]
    at_most = np.maximum.accumulate(at_most)
    at_most[-1] = 1.0
    return lattice, np.concatenate([[0.0], at_most[:-1]]), at_most


def numeric_values(values: Values) -> tuple[FloatArray, int]:
    """Finite values and the count of the rest (None, NaN, +/-inf, unparseable)."""
    array: FloatArray
    if isinstance(values, pd.Series | pd.Index | ExtensionArray):
        try:
            array = values.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            coerced = pd.to_numeric(pd.Series(values), errors="coerce")
            array = coerced.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            coerced = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce")
            array = coerced.to_numpy(dtype=np.float64, na_value=np.nan)
    if array.ndim != 1:
        raise ValueError(f"expected one-dimensional values, got shape {array.shape}")
    finite = np.isfinite(array)
    if finite.all():
        return np.sort(array), 0
    return np.sort(array[finite]), int(array.size - finite.sum())


def interpolators(ref: NumericReference) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """np.interp tables for the reference CDF's right limits P(X <= t) and left limits
    P(X < t): a point mass becomes a jump one float wide, so xp stays strictly increasing."""
    mass = ref.lo < ref.hi
    below, above = np.nextafter(ref.x, -np.inf), np.nextafter(ref.x, np.inf)
    # knots one float apart (vanishingly rare) keep their point mass on one side only
    right_ok = mass & (below > np.append(-np.inf, ref.x[:-1]))
    left_ok = mass & (above < np.append(ref.x[1:], np.inf))
    right_x = np.column_stack([np.where(right_ok, below, np.nan), ref.x]).ravel()
    right_p = np.column_stack([ref.lo, ref.hi]).ravel()
    left_x = np.column_stack([ref.x, np.where(left_ok, above, np.nan)]).ravel()
    left_p = right_p
    keep_right, keep_left = ~np.isnan(right_x), ~np.isnan(left_x)
    return right_x[keep_right], right_p[keep_right], left_x[keep_left], left_p[keep_left]


Gaps: TypeAlias = tuple[FloatArray, FloatArray, FloatArray]


def gaps(ordered: FloatArray, ref: NumericReference) -> list[Gaps]:
    """F_ref - F_current at the start and end of every interval on which the current CDF is
    constant and the reference CDF a straight line, with the interval widths.

    Between consecutive current values the current CDF is (i + 1) / n and, unless a reference
    knot falls in between, the reference CDF is linear: one np.interp pass over the sorted
    values gives it for all of them. The few gaps holding a knot, and the stretches of the
    reference beyond the current values, are split at the knots on a small side array.
    """
    n = ordered.size
    right_x, right_p, left_x, left_p = interpolators(ref)
    cdf = np.interp(ordered, right_x, right_p)
    level = np.linspace(1 / n, (n - 1) / n, n - 1)
    start, end, width = cdf[:-1] - level, cdf[1:] - level, np.diff(ordered)
    # Knot k lies in gap i when s_i < x_k <= s_i+1; those gaps are redone exactly below.
    holder = np.searchsorted(ordered, ref.x, side="left") - 1
    special = np.unique(holder[(holder >= 0) & (holder < n - 1)])
    start[special] = end[special] = 0.0
    pieces_a, pieces_b, pieces_c = [ordered[special]], [ordered[special + 1]], [level[special]]
    if ref.x[0] < ordered[0]:  # reference mass below every current value: F_current = 0
        pieces_a.insert(0, ref.x[:1])
        pieces_b.insert(0, ordered[:1])
        pieces_c.insert(0, np.zeros(1))
    if ref.x[-1] > ordered[-1]:  # reference mass above every current value: F_current = 1
        pieces_a.append(ordered[-1:])
        pieces_b.append(ref.x[-1:])
        pieces_c.append(np.ones(1))
    a, b, c = (np.concatenate(parts) for parts in (pieces_a, pieces_b, pieces_c))
    if a.size == 0:  # every knot sits on a current value or between equal ones
        return [(start, end, width)]
    owner = np.searchsorted(a, ref.x, side="right") - 1
    safe = np.maximum(owner, 0)
    inside = (owner >= 0) & (ref.x > a[safe]) & (ref.x < b[safe])
    points = np.concatenate([a, b, ref.x[inside]])
    ids = np.concatenate([np.arange(a.size), np.arange(a.size), owner[inside]])
    order = np.lexsort((points, ids))
    points, ids = points[order], ids[order]
    same = ids[1:] == ids[:-1]
    u, v, level_uv = points[:-1][same], points[1:][same], c[ids[:-1][same]]
    piece_start = np.interp(u, right_x, right_p) - level_uv
    piece_end = np.interp(v, left_x, left_p) - level_uv
    return [(start, end, width), (piece_start, piece_end, v - u)]


def ks(ordered: FloatArray, ref: NumericReference) -> tuple[float, float]:
    """Largest CDF gap, with the p-value ks_2samp's asymptotic mode would give for the two
    sample sizes (Kolmogorov distribution at n*m/(n+m)), the reference being a sample too."""
    statistic = 0.0
    for start, end, width in gaps(ordered, ref):
        wide = width > 0  # inside a tie, one side's left limit would meet the other's right
        if wide.any():
            ends = np.abs(start[wide]).max(), np.abs(end[wide]).max()
            statistic = max(statistic, *(float(e) for e in ends))
    n, m = ordered.size, ref.n
    effective = max(round(n * m / (n + m)), 1)
    return statistic, float(stats.kstwo.sf(statistic, effective))


def wasserstein(ordered: FloatArray, ref: NumericReference) -> float:
    """W1 = integral of |F_current - F_reference|, exact for the piecewise-linear reference:
    on each interval the integrand is |linear|, a trapezoid or, where it changes sign, two
    triangles."""
    total = 0.0
    for start, end, width in gaps(ordered, ref):
        total += float(np.dot(np.abs(start + end), width)) / 2  # exact where the signs agree
        crossing = np.flatnonzero(start * end < 0)
        if crossing.size:
            p, q, w = np.abs(start[crossing]), np.abs(end[crossing]), width[crossing]
            total += float(np.dot(p * q / (p + q), w))  # two triangles instead of |p - q| / 2
    return total


def numeric_bins(ordered: FloatArray, ref: NumericReference) -> tuple[IntArray, IntArray]:
    """Reference and current counts on [below min, reference bins..., above max]."""
    marks = np.searchsorted(ordered, ref.edges, side="left")
    marks[-1] = np.searchsorted(ordered, ref.edges[-1], side="right")  # last bin is closed
    current = np.concatenate([[marks[0]], np.diff(marks), [ordered.size - marks[-1]]])
    reference = np.concatenate([[0], ref.counts, [0]])
    return reference.astype(np.int64), current.astype(np.int64)


def range_note(ordered: FloatArray, ref: NumericReference) -> str | None:
    outside = int(np.searchsorted(ordered, ref.x[0], side="left"))
    outside += int(ordered.size - np.searchsorted(ordered, ref.x[-1], side="right"))
    if not outside:
        return None
    return f"{outside} of {ordered.size} current values lie outside the reference range"
