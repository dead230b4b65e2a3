"""The one list of event types: `events.record` takes only these, and subscriptions accept
exactly these (or a `domain.*` / `*` pattern over them). A domain that emits a new event
declares it here first; an undeclared type cannot be recorded."""

from enum import StrEnum


class EventType(StrEnum):
    model_deleted = "model.deleted"
    model_alias_moved = "model.alias_moved"
    model_version_created = "model_version.created"
    model_version_status_changed = "model_version.status_changed"
    model_version_package_requested = "model_version.package_requested"
    model_version_packaged = "model_version.packaged"
    pipeline_run_created = "pipeline_run.created"
    pipeline_run_finished = "pipeline_run.finished"
    deployment_created = "deployment.created"
    deployment_updated = "deployment.updated"
    deployment_deleted = "deployment.deleted"
    rollout_start = "rollout.start"
    rollout_hold = "rollout.hold"
    rollout_advance = "rollout.advance"
    rollout_complete = "rollout.complete"
    rollout_rollback = "rollout.rollback"
    alert_fired = "alert.fired"
    alert_resolved = "alert.resolved"
    alert_error = "alert.error"
    drift_detected = "drift.detected"
    drift_feature_detected = "drift.feature_detected"
    data_source_ingest_failed = "data_source.ingest_failed"
    policy_fired = "policy.fired"
    policy_coalesced = "policy.coalesced"
    retrain_rejected = "retrain.rejected"
    retrain_failed = "retrain.failed"
    retrain_registered = "retrain.registered"
    retrain_promoted = "retrain.promoted"
    retrain_rolled_back = "retrain.rolled_back"
    retrain_promote_failed = "retrain.promote_failed"


def domain_of(event_type: str) -> str:
    return event_type.split(".", 1)[0]


def subscribable_patterns() -> list[str]:
    """What a subscription may name: every type, every `domain.*`, and `*`."""
    domains = sorted({domain_of(t) for t in EventType})
    return ["*", *(f"{d}.*" for d in domains), *(t.value for t in EventType)]


def declared(event_type: str) -> EventType:
    """The declared type, or a ValueError naming where to declare it."""
    try:
        return EventType(event_type)
    except ValueError:
        raise ValueError(
            f"undeclared event type {event_type!r}: declare it in app/events/types.py"
        ) from None
