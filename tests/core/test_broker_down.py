"""With the broker down, a request that enqueues a job is not held by the publish: the job's
outbox row commits with the change, the publish is tried off the request path, the row stays
pending, and the relay delivers it once the broker is reachable."""

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.auth import service as auth_service
from app.core.broker import DEFAULT_QUEUE, get_celery
from app.core.config import Settings
from app.core.db import create_db_engine, create_session_factory, unit_of_work
from app.core.dispatch import Dispatcher, celery_publisher
from app.core.migrate import upgrade
from app.core.outbox import OutboxMessage
from app.core.security import Role
from app.main import create_app
from app.subscriptions.service import DELIVER_JOB
from tests.dbutil import is_postgres_url, scratch_postgres
from tests.e2e.services import free_port, private_redis_args


def wait_for(condition: Callable[[], bool], message: str, deadline: float = 120) -> None:
    until = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > until:
            raise AssertionError(message)
        time.sleep(0.1)


@pytest.fixture
def committed(database_url: str, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A database of its own whose sessions really commit: the publish runs in another thread."""
    context: AbstractContextManager[str] = (
        scratch_postgres(database_url, prefix="flywheel_broker_down")
        if is_postgres_url(database_url)
        else nullcontext(f"sqlite:///{tmp_path / 'broker-down.db'}")
    )
    with context as url:
        upgrade(url)
        engine = create_db_engine(url)
        yield create_session_factory(engine)
        engine.dispose()


@pytest.fixture
def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("FLYWHEEL_TEST_REQUIRE_SERVICES") == "1":  # CI never skips it
            pytest.fail("redis-server is required in CI to bring the broker back")
        pytest.skip("needs redis-server to bring the broker back")
    return binary


def test_an_enqueueing_request_is_not_held_by_a_broker_that_is_down(
    committed: sessionmaker[Session], tmp_path: Path, redis_binary: str
) -> None:
    port = free_port()  # nothing listens here: the broker is down
    settings = Settings(
        home=tmp_path / "home",
        database_url="sqlite://",  # unused: the session factory is given
        artifact_root=tmp_path / "artifacts",
        secret_key="broker-down-tests",
        broker_url=f"redis://127.0.0.1:{port}/0",
    )
    app = create_app(settings, session_factory=committed)  # Celery on that broker
    dispatcher = app.state.dispatcher
    real_publish = dispatcher.publish
    answered = threading.Event()
    tried: list[tuple[str, bool]] = []  # (thread, had the request been answered already)

    def publish(message: OutboxMessage) -> None:
        # Had the publish run on the request path, the answer could not come before it:
        # waiting here would then time out, and the attempt be marked as holding the request.
        tried.append((threading.current_thread().name, answered.wait(timeout=20)))
        real_publish(message)

    dispatcher.publish = publish
    with unit_of_work(committed) as session:
        _, token = auth_service.create_token(session, name="admin", role=Role.admin)
    with TestClient(app) as api:
        api.headers["Authorization"] = f"Bearer {token}"
        subscribed = api.post(
            "/api/v1/subscriptions",
            json={"url": "https://1.1.1.1/hooks", "event_types": ["model.deleted"]},
        )
        assert subscribed.status_code == 201, subscribed.text
        assert api.post("/api/v1/models", json={"name": "m"}).status_code == 201
        deleted = api.delete("/api/v1/models/m")  # model.deleted → a delivery job enqueued
        answered.set()
        assert deleted.status_code == 204, deleted.text

    def job() -> OutboxMessage | None:
        with committed() as session:
            return session.scalar(select(OutboxMessage).where(OutboxMessage.task == DELIVER_JOB))

    wait_for(lambda: (row := job()) is not None and row.last_error is not None, "no publish tried")
    assert tried and all(answered_first for _, answered_first in tried), tried
    assert all(thread == "outbox-kick" for thread, _ in tried), tried
    pending = job()
    assert pending is not None and pending.dispatched_at is None  # kept for the relay

    server = subprocess.Popen(
        private_redis_args(port, tmp_path, redis_binary),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        broker = redis.Redis(port=port, socket_connect_timeout=2)

        def up() -> bool:
            try:
                return bool(broker.ping())
            except redis.ConnectionError:
                return False

        wait_for(up, "redis-server did not start")
        relay = Dispatcher(committed, celery_publisher(get_celery(settings)))  # as beat runs it

        def delivered() -> bool:
            relay.relay_once()
            row = job()
            return row is not None and row.dispatched_at is not None

        wait_for(delivered, "the relay did not hand the job to the broker once it was back")
        assert broker.llen(DEFAULT_QUEUE) >= 1
    finally:
        server.terminate()
        server.wait(timeout=30)
