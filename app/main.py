"""The app factory: routers, error handlers, middleware. Settings and sessions are injected."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session, sessionmaker

from app.auth.guard import RequestGuard
from app.auth.router import router as auth_router
from app.core.artifacts import ArtifactStore
from app.core.broker import get_celery
from app.core.config import Settings, get_settings
from app.core.db import create_db_engine, create_session_factory
from app.core.dispatch import Dispatcher, celery_publisher
from app.core.errors import install_error_handlers
from app.core.observability import PrometheusMiddleware
from app.core.outbox import Publish
from app.datasets.router import router as datasets_router
from app.deployments.router import router as deployments_router
from app.explain.router import router as explain_router
from app.health.router import router as health_router
from app.monitoring.router import alerting as alerting_router
from app.monitoring.router import router as monitoring_router
from app.openapi import install_openapi
from app.pipelines.router import pipelines as pipelines_router
from app.pipelines.router import runs as pipeline_runs_router
from app.registry.router import router as registry_router
from app.sources.router import hooks as hooks_router
from app.sources.router import router as sources_router
from app.subscriptions.router import router as subscriptions_router
from app.tracking.router import experiments as experiments_router
from app.tracking.router import runs as runs_router
from app.training.router import router as training_router


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    """Move everything loaded at start-up out of the collector's reach: with pandas, sklearn and
    SQLAlchemy imported, a full collection otherwise pauses a request for ~200 ms."""
    gc.collect()
    gc.freeze()
    yield


def operation_id(route: APIRoute) -> str:
    """Stable operationIds (`create_run`, `search_runs`) so generated SDKs read well."""
    return route.name


def create_app(
    settings: Settings | None = None,
    session_factory: sessionmaker[Session] | None = None,
    publish: Publish | None = None,
) -> FastAPI:
    """`publish` hands outbox jobs to a transport; Celery on the configured broker by default,
    from a thread of the dispatcher's own so that a broker outage never holds a request."""
    settings = settings or get_settings()
    if session_factory is None:
        session_factory = create_session_factory(create_db_engine(settings.resolved_database_url))
    app = FastAPI(
        title="Flywheel",
        version="0.1.0",
        summary="An MLOps control plane: track, register, deploy, monitor and retrain models.",
        generate_unique_id_function=operation_id,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.artifacts = ArtifactStore(settings.resolved_artifact_root)
    app.state.artifacts.ensure()
    # A broker is published to off the request path (it may be down); a transport passed in
    # (tests, in-process) is called right after the commit.
    app.state.dispatcher = Dispatcher(
        session_factory,
        publish or celery_publisher(get_celery(settings)),
        background=publish is None,
    )

    install_error_handlers(app)
    # the guard runs inside the metrics layer, so refused requests are counted too
    app.add_middleware(RequestGuard, settings=settings, session_factory=session_factory)
    app.add_middleware(PrometheusMiddleware)

    routers = (
        health_router,
        auth_router,
        experiments_router,
        runs_router,
        datasets_router,
        registry_router,
        explain_router,
        pipelines_router,
        pipeline_runs_router,
        sources_router,
        hooks_router,
        deployments_router,
        monitoring_router,
        alerting_router,
        subscriptions_router,
        training_router,
    )
    for router in routers:
        app.include_router(router)
    install_openapi(app)
    return app
