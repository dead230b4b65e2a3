import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.all_jobs import load_jobs
from app.auth import service as auth_service
from app.core.artifacts import ArtifactStore
from app.core.config import Settings
from app.core.db import create_db_engine, create_session_factory, utcnow
from app.core.dispatch import Dispatcher
from app.core.jobs import JobContext, run_job
from app.core.migrate import upgrade
from app.core.outbox import OutboxMessage
from app.core.security import Role
from app.main import create_app
from tests.dbutil import is_postgres_url, provide_database, skip_unless_postgres
from tests.registry.helpers import Registry, churn_frame, fit_pipeline


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with provide_database(tmp_path_factory.mktemp("db")) as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def on_postgres(database_url: str) -> bool:
    return is_postgres_url(database_url)


@pytest.fixture
def requires_postgres(database_url: str) -> None:
    skip_unless_postgres(database_url)


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    """One outer transaction per test, rolled back at the end: tests never see each other."""
    with engine.connect() as conn:
        outer = conn.begin()
        yield conn
        if outer.is_active:
            outer.rollback()


@pytest.fixture
def session_factory(connection: Connection) -> sessionmaker[Session]:
    return create_session_factory(connection, join_transaction_mode="create_savepoint")


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as s:
        yield s


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url=database_url,
        artifact_root=tmp_path / "artifacts",
        secret_key="test-secret-key-for-webhook-secrets",
        git_cache=tmp_path / "git-cache",
    )


class InlineJobs:
    """A transport that keeps published jobs in a list and runs them when a test says so.

    The jobs run the same registered handlers, in their own unit of work, as a worker would.
    """

    def __init__(self, ctx: JobContext) -> None:
        load_jobs()
        self.ctx = ctx
        self.queue: list[OutboxMessage] = []
        self.done: list[str] = []

    def publish(self, message: OutboxMessage) -> None:
        self.queue.append(message)

    def run(self, wait_for_delayed: float = 10.0) -> list[str]:
        """Run until nothing is queued; delayed jobs (retries) due within the wait are awaited."""
        ran = []
        dispatcher = Dispatcher(self.ctx.session_factory, self.publish)
        while True:
            while self.queue:
                message = self.queue.pop(0)
                run_job(self.ctx, message.task, message.payload)
                ran.append(message.task)
                dispatcher.relay_once()
            due = self._next_delayed()
            if due is None or due > wait_for_delayed:
                break
            time.sleep(max(due, 0))
            dispatcher.relay_once()
        self.done.extend(ran)
        return ran

    def _next_delayed(self) -> float | None:
        with self.ctx.session_factory() as session:
            first = session.scalar(
                select(func.min(OutboxMessage.available_at)).where(
                    OutboxMessage.dispatched_at.is_(None)
                )
            )
        return None if first is None else (first - utcnow()).total_seconds()


@pytest.fixture
def jobs(settings: Settings, session_factory: sessionmaker[Session]) -> InlineJobs:
    store = ArtifactStore(settings.resolved_artifact_root)
    jobs = InlineJobs(JobContext(settings, store, session_factory))
    # jobs hand their own outbox rows to this transport right after they commit, as in workers
    jobs.ctx = JobContext(settings, store, session_factory, publish=jobs.publish)
    return jobs


@pytest.fixture
def app(settings: Settings, session_factory: sessionmaker[Session], jobs: InlineJobs) -> FastAPI:
    return create_app(settings, session_factory=session_factory, publish=jobs.publish)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def tokens(session_factory: sessionmaker[Session]) -> dict[Role, str]:
    secrets = {}
    with session_factory() as s:
        for role in Role:
            _, secrets[role] = auth_service.create_token(s, name=f"test-{role.value}", role=role)
        s.commit()
    return secrets


@pytest.fixture
def auth(tokens: dict[Role, str]) -> Callable[[Role], dict[str, str]]:
    def headers(role: Role = Role.admin) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[role]}"}

    return headers


@pytest.fixture
def api(client: TestClient, auth: Callable[[Role], dict[str, str]]) -> TestClient:
    """A client that sends an admin token unless a test passes other headers."""
    client.headers.update(auth(Role.admin))
    return client


@pytest.fixture
def versions(api: TestClient, tmp_path: Path, jobs: InlineJobs) -> None:
    """Two ready versions of `churn`: 1 is the champion, 2 the challenger."""
    frame = churn_frame()
    registry = Registry(api, tmp_path)
    dataset = registry.dataset_version(frame)
    registry.register("churn", fit_pipeline(frame), dataset["id"])
    registry.register("churn", fit_pipeline(churn_frame(seed=3)), dataset["id"])
    jobs.run()
    api.put("/api/v1/models/churn/aliases/champion", json={"version": 1})
    api.put("/api/v1/models/churn/aliases/challenger", json={"version": 2})
