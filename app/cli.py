"""The `flywheel` command: run the service, migrate the database, bootstrap tokens."""

import os
import tempfile
import threading
from typing import Annotated

import typer
import uvicorn

from app.auth import service as auth_service
from app.core.config import Settings, get_settings
from app.core.db import create_db_engine, create_session_factory, unit_of_work
from app.core.migrate import upgrade
from app.core.security import Role

cli = typer.Typer(help="Flywheel: an MLOps control plane.", no_args_is_help=True)
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
tokens_cli = typer.Typer(help="API tokens.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(tokens_cli, name="tokens")

HostOption = Annotated[str | None, typer.Option(help="Interface to listen on.")]
PortOption = Annotated[int | None, typer.Option(help="Port to listen on.")]


def _settings(host: str | None = None, port: int | None = None) -> Settings:
    settings = get_settings()
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    return settings.model_copy(update=overrides) if overrides else settings


def _create_token(settings: Settings, name: str, role: Role) -> str:
    engine = create_db_engine(settings.resolved_database_url)
    try:
        with unit_of_work(create_session_factory(engine)) as session:
            _, secret = auth_service.create_token(session, name=name, role=role)
        return secret
    finally:
        engine.dispose()


def _bootstrap_admin(settings: Settings) -> str | None:
    """On the very first start, mint an admin token so the newcomer can call the API."""
    engine = create_db_engine(settings.resolved_database_url)
    try:
        with unit_of_work(create_session_factory(engine)) as session:
            if auth_service.count_tokens(session) > 0:
                return None
            _, secret = auth_service.create_token(session, name="bootstrap-admin", role=Role.admin)
        return secret
    finally:
        engine.dispose()


@cli.command()
def up(host: HostOption = None, port: PortOption = None) -> None:
    """Everything in one process on an embedded SQLite database: the first-run mode."""
    settings = _settings(host, port)
    os.environ["FLYWHEEL_HOST"] = settings.host
    os.environ["FLYWHEEL_PORT"] = str(settings.port)
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    secret = _bootstrap_admin(settings)
    url = f"http://{settings.host}:{settings.port}"
    typer.echo(f"Flywheel is starting at {url} (API docs: {url}/docs)")
    typer.echo(f"Database: {settings.resolved_database_url}")
    if secret:
        typer.echo("An admin token was created. It is shown only this once; keep it safe:")
        typer.echo(secret)
    from workers import embedded  # the worker stack loads only in the modes that run it

    worker = embedded.start()
    gateway, gateway_thread = _start_gateway_thread(settings)
    typer.echo(
        f"Gateway (data plane) at http://{settings.host}:{settings.gateway_port}/serve/<deployment>/predict"
    )
    from app.serving import server as data_plane_server

    data_plane_server.freeze_heap()  # the embedded gateway shares this process's collector
    try:
        uvicorn.run("app.asgi:app", host=settings.host, port=settings.port, log_level="info")
    finally:
        gateway.should_exit = True  # its shutdown stops the replicas it started
        gateway_thread.join(timeout=15)
        worker.stop()


def _start_gateway_thread(settings: Settings) -> tuple[uvicorn.Server, threading.Thread]:
    """Embedded mode serves deployments from the same process tree as the API."""
    from app.serving import server as data_plane_server
    from app.serving.gateway import create_gateway

    config = uvicorn.Config(
        create_gateway(settings),
        host=settings.host,
        port=settings.gateway_port,
        **data_plane_server.options("warning"),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    return server, thread


@cli.command()
def api(
    host: HostOption = None,
    port: PortOption = None,
    workers: Annotated[int | None, typer.Option(help="uvicorn worker processes.")] = None,
) -> None:
    """The control-plane API (production: run `flywheel db upgrade` first).

    With several workers, `kill -HUP <pid>` restarts them without downtime: each worker is
    replaced only once its successor is serving, and a retiring worker finishes the requests
    it holds (up to api_graceful_shutdown_seconds)."""
    settings = _settings(host, port)
    count = workers or settings.api_workers
    if count > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="flywheel-prom-")
    uvicorn.run(
        "app.asgi:app",
        host=settings.host,
        port=settings.port,
        workers=count,
        log_level="info",
        access_log=False,
        timeout_worker_healthcheck=settings.api_worker_start_seconds,
        timeout_graceful_shutdown=settings.api_graceful_shutdown_seconds,
    )


@cli.command()
def gateway(host: HostOption = None, port: PortOption = None) -> None:
    """The data plane: serves deployments from replica processes it starts and stops."""
    from app.serving import server as data_plane_server
    from app.serving.gateway import create_gateway

    settings = _settings(host, port)
    gateway_port = port or settings.gateway_port
    data_plane_server.run(create_gateway(settings), settings.host, gateway_port, "info")


@db_cli.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default: head)."""
    settings = get_settings()
    upgrade(settings.resolved_database_url, revision)
    typer.echo(f"database at {revision}")


@tokens_cli.command("create")
def tokens_create(
    role: Annotated[Role, typer.Option(help="viewer < editor < deployer < admin")],
    name: Annotated[str, typer.Option(help="Who or what the token is for.")],
) -> None:
    """Create a token and print its secret on its own line (shown once)."""
    typer.echo(_create_token(get_settings(), name, role))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
