import random

from app.serving.routing import Lane, Replica, bucket, choose, least_outstanding, stand_in


def lanes() -> list[Lane]:
    return [
        Lane("blue", 90, "live", 1, 1, "m", {}),
        Lane("green", 10, "live", 2, 2, "m", {}),
        Lane("mirror", 0, "shadow", 2, 2, "m", {}),
    ]


def test_weights_land_within_two_points_over_5000_requests() -> None:
    rng = random.Random(1)
    picks = [choose("d", lanes(), None, rng).name for _ in range(5000)]
    assert abs(picks.count("green") / 5000 * 100 - 10) <= 2
    assert "mirror" not in picks


def test_sticky_units_never_switch_and_spread_by_weight() -> None:
    rng = random.Random(2)
    users = [f"user-{i}" for i in range(5000)]
    first = {u: choose("d", lanes(), u, rng).name for u in users}
    again = {u: choose("d", lanes(), u, rng).name for u in users}
    assert first == again
    assert abs(list(first.values()).count("green") / 5000 * 100 - 10) <= 2
    assert 0 <= bucket("d", "x") < 100


def test_least_outstanding_skips_unready_and_busy() -> None:
    rng = random.Random(3)
    replicas = [
        Replica(1, ready=False),
        Replica(2, ready=True, in_flight=3),
        Replica(3, ready=True, in_flight=1),
    ]
    assert least_outstanding(replicas, rng).port == 3  # type: ignore[union-attr]
    assert least_outstanding([Replica(4)], rng) is None


def test_a_stand_in_is_a_serving_variant_with_a_ready_replica_first() -> None:
    rng = random.Random(4)
    _, green, mirror = lanes()
    assert stand_in("d", [green, mirror], None, rng) is green  # never a shadow
    waiting = Lane("teal", 50, "live", 3, 3, "m", {}, replicas=[Replica(5)])
    green.replicas = [Replica(6, ready=True)]
    picked = [stand_in("d", [waiting, green], f"u{i}", rng) for i in range(50)]
    assert all(lane is green for lane in picked)  # the sticky choice among those ready now
    green.retired = True
    assert stand_in("d", [green, mirror], None, rng) is None
    assert stand_in("d", [waiting, green], None, rng) is waiting  # not ready, but it serves
