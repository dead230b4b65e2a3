import logging
from functools import cache
from typing import Any

from celery import Celery, Task
from celery.signals import beat_init, worker_process_init
from sqlalchemy.exc import OperationalError

from app.all_jobs import load_jobs
from app.core.artifacts import ArtifactStore
from app.core.broker import get_celery
from app.core.config import get_settings
from app.core.db import create_db_engine, create_session_factory
from app.core.dispatch import Dispatcher, RelayLoop, celery_publisher
from app.core.jobs import JOBS, JobContext, JobSpec, run_job

logger = logging.getLogger(__name__)


@cache
def context() -> JobContext:
    """Per process (after fork): the engine is never shared across processes."""
    settings = get_settings()
    factory = create_session_factory(create_db_engine(settings.resolved_database_url))
    return JobContext(
        settings=settings,
        artifacts=ArtifactStore(settings.resolved_artifact_root),
        session_factory=factory,
        publish=celery_publisher(app),
    )


def register_tasks(celery: Celery, get_context: Any = context) -> None:
    for spec in load_jobs().values():
        _register(celery, spec, get_context)


def _register(celery: Celery, spec: JobSpec, get_context: Any) -> None:
    @celery.task(
        name=spec.name,
        bind=True,
        autoretry_for=(OperationalError,),
        retry_backoff=True,
        retry_backoff_max=60,
        retry_jitter=True,
        max_retries=spec.max_retries,
        soft_time_limit=spec.soft_time_limit,
    )
    def task(self: Task, **payload: Any) -> None:
        run_job(get_context(), spec.name, payload)


app = get_celery(get_settings())
register_tasks(app)


@worker_process_init.connect
def _fresh_engine_per_child(**_: Any) -> None:
    context.cache_clear()


@beat_init.connect
def _start_relay(sender: Any = None, **_: Any) -> None:
    """Beat hands outbox rows to the broker every second (the API also does so on commit)."""
    ctx = context()
    RelayLoop(Dispatcher(ctx.session_factory, celery_publisher(app))).start()
    logger.info("outbox relay started in beat (%d jobs known)", len(JOBS))
