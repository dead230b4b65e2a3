"""Background jobs as plain functions `(session, ctx, **payload)`, registered by name.

Domains declare jobs in their `jobs.py`; Celery (workers/) only transports them, so a test
or the embedded mode runs exactly the same function with the same transaction rules.
"""

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.core.artifacts import ArtifactStore
from app.core.config import Settings
from app.core.db import unit_of_work
from app.core.dispatch import Dispatcher
from app.core.outbox import PENDING_IDS_KEY, Publish

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    settings: Settings
    artifacts: ArtifactStore
    session_factory: sessionmaker[Session]
    publish: Publish | None = None

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A unit of work whose outbox rows are handed to the broker right after it commits
        (beat's relay remains the safety net if that fails)."""
        with unit_of_work(self.session_factory) as session:
            yield session
        pending = session.info.pop(PENDING_IDS_KEY, None)
        if pending and self.publish is not None:
            Dispatcher(self.session_factory, self.publish).kick(pending)


Handler = Callable[..., None]


def each_locked(
    ctx: JobContext,
    model: Any,
    ids: Sequence[int],
    action: Callable[[Session, Any], None],
    what: str,
) -> None:
    """One unit of work per row, locked (rows another worker holds are skipped), so one
    that fails is logged and does not hold the others back."""
    for row_id in ids:
        try:
            with ctx.transaction() as session:
                row = session.get(model, row_id, with_for_update={"skip_locked": True})
                if row is not None:
                    action(session, row)
        except Exception:
            logger.exception("%s %s failed", what, row_id)


@dataclass(frozen=True)
class JobSpec:
    name: str
    handler: Handler
    max_retries: int
    soft_time_limit: int | None
    transactional: bool


JOBS: dict[str, JobSpec] = {}


def job(
    name: str,
    *,
    max_retries: int = 5,
    soft_time_limit: int | None = None,
    transactional: bool = True,
) -> Callable[[Handler], Handler]:
    """`transactional=False` jobs get only the context and open their own units of work: for
    long tasks whose progress (running, heartbeat) must be visible before they end."""

    def register(handler: Handler) -> Handler:
        if name in JOBS and JOBS[name].handler is not handler:
            raise RuntimeError(f"job {name!r} is registered twice")
        JOBS[name] = JobSpec(name, handler, max_retries, soft_time_limit, transactional)
        return handler

    return register


def run_job(ctx: JobContext, name: str, payload: dict[str, Any]) -> None:
    """One job, one transaction: the handler's changes commit together or not at all."""
    spec = JOBS.get(name)
    if spec is None:
        raise LookupError(f"no job named {name!r}; known: {sorted(JOBS)}")
    if not spec.transactional:
        spec.handler(ctx, **payload)
        return
    with ctx.transaction() as session:
        spec.handler(session, ctx, **payload)
