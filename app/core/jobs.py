"""Background jobs as plain functions `(session, ctx, **payload)`, registered by name.

Domains declare jobs in their `jobs.py`; Celery (workers/) only transports them, so a test
or the embedded mode runs exactly the same function with the same transaction rules.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.core.artifacts import ArtifactStore
from app.core.config import Settings
from app.core.db import unit_of_work

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    settings: Settings
    artifacts: ArtifactStore
    session_factory: sessionmaker[Session]


Handler = Callable[..., None]


@dataclass(frozen=True)
class JobSpec:
    name: str
    handler: Handler
    max_retries: int
    soft_time_limit: int | None


JOBS: dict[str, JobSpec] = {}


def job(
    name: str, *, max_retries: int = 5, soft_time_limit: int | None = None
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        if name in JOBS and JOBS[name].handler is not handler:
            raise RuntimeError(f"job {name!r} is registered twice")
        JOBS[name] = JobSpec(name, handler, max_retries, soft_time_limit)
        return handler

    return register


def run_job(ctx: JobContext, name: str, payload: dict[str, Any]) -> None:
    """One job, one transaction: the handler's changes commit together or not at all."""
    spec = JOBS.get(name)
    if spec is None:
        raise LookupError(f"no job named {name!r}; known: {sorted(JOBS)}")
    with unit_of_work(ctx.session_factory) as session:
        spec.handler(session, ctx, **payload)
