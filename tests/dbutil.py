"""Where the tests' database lives: FLYWHEEL_TEST_DATABASE_URL, else local Postgres, else SQLite."""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _admin_dsn(url: str) -> str:
    parsed = make_url(url).set(drivername="postgresql", database="postgres")
    return parsed.render_as_string(hide_password=False)


def postgres_reachable(dsn: str = LOCAL_POSTGRES) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


@contextmanager
def scratch_postgres(base_url: str, prefix: str = "flywheel_test") -> Iterator[str]:
    """A brand-new database on the server of base_url, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = _admin_dsn(base_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def provide_database(tmp_dir: Path) -> Iterator[str]:
    explicit = os.environ.get("FLYWHEEL_TEST_DATABASE_URL")
    if explicit:
        if make_url(explicit).get_backend_name() == "postgresql" and not postgres_reachable(
            _admin_dsn(explicit)
        ):
            raise RuntimeError(f"FLYWHEEL_TEST_DATABASE_URL is set but unreachable: {explicit}")
        yield explicit
    elif os.environ.get("FLYWHEEL_TEST_SQLITE") != "1" and postgres_reachable():
        with scratch_postgres("postgresql+psycopg://postgres@127.0.0.1:5432/postgres") as url:
            yield url
    else:
        yield f"sqlite:///{tmp_dir / 'flywheel-test.db'}"


def is_postgres_url(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def skip_unless_postgres(url: str) -> None:
    """Skip a Postgres-only test on the SQLite pass; fail it where the real services are
    required and Postgres is not what the suite runs on, so CI can never skip it silently."""
    if is_postgres_url(url):
        return
    if os.environ.get("FLYWHEEL_TEST_REQUIRE_SERVICES") == "1" and (
        os.environ.get("FLYWHEEL_TEST_SQLITE") != "1"
    ):
        pytest.fail("this test needs PostgreSQL, which CI requires, but the suite runs on SQLite")
    pytest.skip("needs PostgreSQL; the Postgres pass runs it")
