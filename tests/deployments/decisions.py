"""What a rollout's recorded decisions mean, checked by meaning rather than by count."""

from typing import Any


def assert_walked(decisions: list[dict[str, Any]], steps: list[int]) -> None:
    """The meaning of a healthy rollout's decisions, not their count: it started, advanced
    through every step in order and completed, with nothing else but holds in between (a
    hold while a step waits for data is legitimate), and never rolled back."""
    actions = [d["action"] for d in decisions]
    assert set(actions) <= {"start", "hold", "advance", "complete"}, actions
    walked = [d for d in decisions if d["action"] != "hold"]
    expected = ["start", *["advance"] * (len(steps) - 2), "complete"]
    assert [d["action"] for d in walked] == expected, actions
    assert [d["percent"] for d in walked] == steps, decisions
    held = [d["percent"] for d in decisions if d["action"] == "hold"]
    assert set(held) <= set(steps[:-1]), decisions  # holds only at a step on the way
    percents = [d["percent"] for d in decisions]
    assert percents == sorted(percents), decisions  # never back to an earlier step
