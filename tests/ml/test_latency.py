import numpy as np

from app.ml import latency


def test_quantiles_from_merged_histograms_are_within_a_bucket_of_the_exact_ones() -> None:
    rng = np.random.default_rng(3)
    samples = rng.lognormal(mean=1.5, sigma=0.8, size=20_000)
    parts = [latency.empty() for _ in range(3)]  # three gateways, one minute each
    for i, ms in enumerate(samples):
        latency.add(parts[i % 3], float(ms))
    merged = latency.merge(parts)
    assert sum(merged) == len(samples)
    for q in (0.5, 0.95, 0.99):
        estimate = latency.quantile(merged, q)
        exact = float(np.quantile(samples, q))
        assert estimate is not None
        assert abs(estimate - exact) / exact < 0.12, (q, estimate, exact)


def test_an_empty_histogram_has_no_quantile_and_outliers_land_in_the_last_bucket() -> None:
    assert latency.quantile(latency.empty(), 0.99) is None
    counts = latency.empty()
    latency.add(counts, 10_000_000.0)
    latency.add(counts, 0.0)
    assert counts[-1] == 1 and counts[0] == 1
