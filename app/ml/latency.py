"""Latency histograms with fixed log-spaced buckets, so per-minute rollups from any number of
gateways merge by adding counts and still answer p50/p95/p99 within a bucket's width (±10%)."""

import bisect
import math
from collections.abc import Iterable, Sequence

GROWTH = 1.2
SMALLEST_MS = 0.05
BUCKETS = 80  # 0.05 ms .. ~110 s; everything above lands in the last bucket
EDGES = [SMALLEST_MS * GROWTH**i for i in range(BUCKETS)]  # upper edges


def empty() -> list[int]:
    return [0] * BUCKETS


def bucket_of(ms: float) -> int:
    return min(bisect.bisect_left(EDGES, ms), BUCKETS - 1)


def add(counts: list[int], ms: float) -> None:
    counts[bucket_of(ms)] += 1


def merge(histograms: Iterable[Sequence[int]]) -> list[int]:
    merged = empty()
    for counts in histograms:
        for i, count in enumerate(counts[:BUCKETS]):
            merged[i] += count
    return merged


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The geometric middle of the bucket holding the q-th observation; None when empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for i, count in enumerate(counts):
        seen += count
        if seen >= rank:
            low = EDGES[i - 1] if i else 0.0
            return round(math.sqrt(low * EDGES[i]) if low else EDGES[i] / 2, 3)
    return EDGES[-1]
