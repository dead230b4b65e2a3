import itertools

from app.serving.autoscaler import Autoscaler

POLICY = {
    "min_replicas": 1,
    "max_replicas": 4,
    "target_in_flight": 2.0,
    "window_seconds": 10,
    "scale_up_stabilization_seconds": 0,
    "scale_down_stabilization_seconds": 30,
    "scale_to_zero_after_seconds": None,
}


def test_scales_up_at_once_to_the_load_clamped_to_max() -> None:
    scaler = Autoscaler.from_policy(POLICY)
    for t in range(10):
        scaler.observe(float(t), 5.0, requested=True)
    decision = scaler.decide(10.0, current=1)
    assert decision.desired == 3 and decision.average_in_flight == 5.0  # ceil(5 / 2)
    for t in range(10, 20):
        scaler.observe(float(t), 40.0, requested=True)
    assert scaler.decide(20.0, current=3).desired == 4


def test_scale_down_waits_for_the_stabilization_window() -> None:
    """Beside an identical scaler without a scale-down window: the load's own average drops
    first; the stabilized one follows only once 30 s of lower recommendations agree."""
    stable = Autoscaler.from_policy(POLICY)
    instant = Autoscaler.from_policy(POLICY | {"scale_down_stabilization_seconds": 0})
    for scaler in (stable, instant):
        for t in range(10):
            scaler.observe(float(t), 8.0, requested=True)
        assert scaler.decide(10.0, current=4).desired == 4
    held, followed = [], []
    for t in range(11, 80):
        for scaler, out in ((stable, held), (instant, followed)):
            scaler.observe(float(t), 0.5, requested=True)
            out.append(scaler.decide(float(t), current=4).desired)
    first_drop = next(i for i, d in enumerate(followed) if d < 4)
    held_until = next(i for i, d in enumerate(held) if d < 4)
    assert held_until - first_drop >= 25, (held, followed)  # no flapping after the load drops
    assert held[-1] == 1  # after 30 s of agreement, down to min
    assert all(a >= b for a, b in itertools.pairwise(held))


def test_scale_to_zero_after_idle_and_never_below_min_otherwise() -> None:
    scaler = Autoscaler.from_policy(POLICY | {"min_replicas": 0, "scale_to_zero_after_seconds": 20})
    scaler.observe(0.0, 1.0, requested=True)
    assert scaler.decide(5.0, current=1).desired == 1
    for t in range(11, 25):
        scaler.observe(float(t), 0.0, requested=False)
    decision = scaler.decide(25.0, current=1)
    assert decision.desired == 0 and "no requests" in decision.reason
    plain = Autoscaler.from_policy(POLICY)
    for t in range(100):
        plain.observe(float(t), 0.0, requested=False)
    assert plain.decide(100.0, current=1).desired == 1


def test_at_zero_it_stays_at_zero_until_a_request() -> None:
    scaler = Autoscaler.from_policy(POLICY | {"min_replicas": 0, "scale_to_zero_after_seconds": 20})
    scaler.observe(0.0, 0.0, requested=False)
    assert scaler.decide(1.0, current=0).desired == 0
