"""Imports every domain's jobs so the registry is complete (workers, embedded mode, tests)."""

from app.core.jobs import JOBS, JobSpec


def load_jobs() -> dict[str, JobSpec]:
    from app.deployments import jobs as deployment_jobs  # noqa: F401
    from app.explain import jobs as explain_jobs  # noqa: F401
    from app.monitoring import jobs as monitoring_jobs  # noqa: F401
    from app.pipelines import housekeeping, orchestrator  # noqa: F401
    from app.registry import jobs as registry_jobs  # noqa: F401
    from app.sources import jobs as source_jobs  # noqa: F401
    from app.subscriptions import jobs as subscription_jobs  # noqa: F401
    from app.training import jobs as training_jobs  # noqa: F401

    return JOBS
