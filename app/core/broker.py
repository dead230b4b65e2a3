"""The Celery application's configuration, shared by the API (to publish) and the workers."""

from celery import Celery

from app.core.config import Settings

DEFAULT_QUEUE = "flywheel"


def make_celery(settings: Settings) -> Celery:
    celery = Celery("flywheel", broker=settings.broker_url, set_as_current=False)
    celery.conf.update(
        task_default_queue=DEFAULT_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        # Long ML tasks and no loss: ack after the work, requeue if the worker dies,
        # take one message at a time so a long task never holds others hostage.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        broker_connection_max_retries=None,  # workers and beat reconnect forever after an outage
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        beat_schedule={
            "pipelines-sweep": {"task": "pipelines.sweep", "schedule": settings.sweep_seconds},
            "pipelines-schedules": {"task": "pipelines.tick_schedules", "schedule": 15.0},
            "monitoring-prune": {"task": "monitoring.prune", "schedule": 3600.0},
            "monitoring-drift-schedules": {
                "task": "monitoring.tick_drift",
                "schedule": settings.drift_check_seconds,
            },
            "monitoring-alerts": {
                "task": "monitoring.evaluate_alerts",
                "schedule": settings.alert_check_seconds,
            },
            "training-policies": {
                "task": "training.tick",
                "schedule": settings.policy_check_seconds,
            },
            "training-prune": {"task": "training.prune", "schedule": 3600.0},
            "deployments-rollouts": {
                "task": "deployments.advance_rollouts",
                "schedule": settings.rollout_check_seconds,
            },
        },
    )
    return celery


_APPS: dict[tuple[str, int], Celery] = {}


def get_celery(settings: Settings) -> Celery:
    """One Celery app per broker, so embedded mode's memory:// broker is shared in-process."""
    key = (settings.broker_url, settings.broker_visibility_timeout)
    if key not in _APPS:
        _APPS[key] = make_celery(settings)
    return _APPS[key]
