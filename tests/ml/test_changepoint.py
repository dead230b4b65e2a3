import math
import time

import numpy as np
import numpy.typing as npt
import pytest

from app.ml.changepoint import (
    METHODS,
    Change,
    adwin,
    detect,
    find_changes,
    last_change,
    page_hinkley,
)

CHANGE_AT = 5_000


def bernoulli_jump(seed: int, before: float = 0.1, after: float = 0.4) -> npt.NDArray[np.float64]:
    """0/1 errors whose rate jumps at CHANGE_AT, as a model's misclassifications after a shift."""
    rng = np.random.default_rng(seed)
    head = rng.random(CHANGE_AT) < before
    tail = rng.random(CHANGE_AT) < after
    return np.concatenate([head, tail]).astype(np.float64)


# --- the acceptance cases -----------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_detects_error_rate_jump_quickly(method: str, seed: int) -> None:
    stream = bernoulli_jump(seed)
    changes = find_changes(stream, method)  # type: ignore[arg-type]
    assert changes, "the jump from 0.1 to 0.4 was missed"
    first = changes[0].detected_at
    assert CHANGE_AT <= first < CHANGE_AT + 500  # no alarm before the change, delay < 500
    # The current regime is estimated to start close to the true change.
    assert abs(changes[-1].start - CHANGE_AT) < 200
    assert all(c.start <= c.detected_at for c in changes)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [10, 11, 12])
def test_no_alarm_on_stationary_stream(method: str, seed: int) -> None:
    stream = (np.random.default_rng(seed).random(20_000) < 0.1).astype(np.float64)
    assert detect(stream, method) == []  # type: ignore[arg-type]
    assert last_change(stream, method) is None  # type: ignore[arg-type]


def test_adwin_on_absolute_errors() -> None:
    """ADWIN's bound scales with the window's variance, so regression errors need no tuning."""
    rng = np.random.default_rng(3)
    stream = np.abs(np.concatenate([rng.normal(0, 1, 6_000), rng.normal(0, 2, 2_000)]))
    changes = adwin(stream)
    assert changes and 6_000 <= changes[0].detected_at < 6_200
    assert abs(changes[-1].start - 6_000) < 200
    assert adwin(np.abs(rng.normal(0, 5, 20_000))) == []


def test_adwin_sees_decreases_page_hinkley_does_not() -> None:
    stream = bernoulli_jump(4, before=0.4, after=0.1)
    assert any(CHANGE_AT <= d < CHANGE_AT + 500 for d in detect(stream, "adwin"))
    # One-sided: a model getting better raises no alarm. (At an error rate of 0.4 the default
    # threshold allows the occasional false alarm before the change; see the module docstring.)
    assert all(d < CHANGE_AT for d in detect(stream, "page_hinkley"))


# --- exactness ---------------------------------------------------------------------------------


def test_page_hinkley_by_hand() -> None:
    # 20 zeros, then ones; delta 0: m stays 0, then grows by sum_j 20 / (20 + j), which first
    # exceeds 5 at j = 6 (0.952 + 0.909 + 0.870 + 0.833 + 0.8 + 0.769 = 5.13), the 26th point.
    stream = [0.0] * 20 + [1.0] * 20
    changes = page_hinkley(stream, delta=0.0, threshold=5.0, min_instances=1)
    assert changes[0] == Change(detected_at=25, start=20)
    assert sum(20 / (20 + j) for j in range(1, 6)) < 5 < sum(20 / (20 + j) for j in range(1, 7))


def _reference_adwin(x: list[float], delta: float, min_window: int) -> list[tuple[int, int]]:
    """The paper's ADWIN, literally: after each point test every split, drop the oldest point
    while any split's means differ by more than eps_cut."""
    out: list[tuple[int, int]] = []
    start = 0
    for end in range(1, len(x) + 1):
        found = False
        while True:
            w = x[start:end]
            width = len(w)
            if width <= 0 or width < 2 * min_window:
                break
            mean = sum(w) / width
            var = sum((v - mean) ** 2 for v in w) / width
            log_term = math.log(2 * math.log(width) / delta)
            cut = False
            for n1 in range(min_window, width - min_window + 1):
                n0 = width - n1
                m_recip = 1 / n0 + 1 / n1
                eps = math.sqrt(2 * m_recip * var * log_term) + 2 / 3 * m_recip * log_term
                if abs(sum(w[:n0]) / n0 - sum(w[n0:]) / n1) > eps:
                    cut = True
                    break
            if not cut:
                break
            found = True
            start += 1
        if found:
            out.append((end - 1, start))
    return out


def test_adwin_matches_the_exact_definition_on_a_dense_grid() -> None:
    """With a cut point at every position and a check after every point, the grid variant is
    exactly the paper's algorithm."""
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.random(150) < 0.15, rng.random(150) < 0.75]).astype(float).tolist()
    ours = adwin(x, delta=0.01, clock=1, min_window=5, grace_period=0, max_buckets=len(x))
    reference = _reference_adwin(x, delta=0.01, min_window=5)
    assert reference  # the case is not vacuous
    assert [(c.detected_at, c.start) for c in ours] == reference


@pytest.mark.parametrize("method", METHODS)
def test_prefix_consistent_like_an_online_detector(method: str) -> None:
    stream = bernoulli_jump(6)
    full = find_changes(stream, method)  # type: ignore[arg-type]
    for cut in (5_100, 5_300, 7_777):
        prefix = find_changes(stream[:cut], method)  # type: ignore[arg-type]
        assert prefix == [c for c in full if c.detected_at < cut]


def test_large_stream_is_fast() -> None:
    stream = (np.random.default_rng(8).random(100_000) < 0.2).astype(np.float64)
    started = time.perf_counter()
    adwin(stream)
    page_hinkley(stream)
    assert time.perf_counter() - started < 5.0  # ~0.3 s here; guards against O(n^2)


# --- API and input checks ----------------------------------------------------------------------


def test_api_shapes() -> None:
    stream = bernoulli_jump(7)
    changes = find_changes(stream, "adwin", delta=0.01)
    assert detect(stream, "adwin", delta=0.01) == [c.detected_at for c in changes]
    assert last_change(stream, "adwin", delta=0.01) == changes[-1].detected_at
    assert detect(stream) == detect(stream, "adwin")  # adwin is the default
    assert detect([]) == [] and last_change([], "page_hinkley") is None
    # A stricter threshold alarms later.
    loose = detect(stream, "page_hinkley", threshold=20)[0]
    strict = detect(stream, "page_hinkley", threshold=80)[0]
    assert loose < strict


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: detect([0.0, 1.0], "cusum"), "unknown change detection method"),  # type: ignore[arg-type]
        (lambda: detect([0.0, 1.0], "adwin", threshold=3), "unknown parameter"),
        (lambda: detect([0.0, float("nan")]), "finite"),
        (lambda: detect([[0.0, 1.0]]), "1-D"),
        (lambda: detect(["a", "b"]), "numbers"),
        (lambda: adwin([0.0], delta=1.5), "delta"),
        (lambda: adwin([0.0], clock=0), "clock"),
        (lambda: adwin([0.0], max_buckets=2.5), "max_buckets"),  # type: ignore[arg-type]
        (lambda: page_hinkley([0.0], threshold=0), "threshold"),
        (lambda: page_hinkley([0.0], min_instances=True), "min_instances"),
        (lambda: page_hinkley([0.0], delta=-1), "delta"),
    ],
)
def test_bad_input_is_a_clear_value_error(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]
