"""Real processes for end-to-end tests: the API and Celery workers on Postgres and Redis."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

from app.auth import service as auth_service
from app.core.db import create_db_engine, create_session_factory, unit_of_work
from app.core.security import Role

BIN = Path(sys.executable).parent
# how long a process may take to start: generous, for a machine whose cores are all busy
STARTUP_SECONDS = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_url(db: int = 7) -> str:
    return f"redis://127.0.0.1:6379/{db}"


def require_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    client.ping()
    client.flushdb()


def service_env(database_url: str, broker_url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env |= {
        "FLYWHEEL_DATABASE_URL": database_url,
        "FLYWHEEL_BROKER_URL": broker_url,
        "FLYWHEEL_HOME": str(home),
        "FLYWHEEL_ARTIFACT_ROOT": str(home / "artifacts"),
        "FLYWHEEL_SECRET_KEY": "e2e-secret-key",
    }
    return env


class Process:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = log.open("w")
        self.popen = subprocess.Popen(args, env=env, stdout=self.handle, stderr=subprocess.STDOUT)

    def output(self) -> str:
        if not self.handle.closed:
            self.handle.flush()
        return self.log.read_text()

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.handle.close()


def start_api(env: dict[str, str], log_dir: Path, *extra: str) -> tuple[Process, str]:
    port = free_port()
    args = [str(BIN / "flywheel"), "api", "--port", str(port), *extra]
    process = Process(args, env, log_dir / f"api-{port}.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
        if process.popen.poll() is not None:
            break
    process.stop()
    raise AssertionError(f"the API did not start:\n{process.output()}")


def start_worker(env: dict[str, str], log_dir: Path, name: str, *extra: str) -> Process:
    args = [
        str(BIN / "celery"),
        "-A",
        "workers",
        "worker",
        "-n",
        f"{name}@%h",
        "-l",
        "INFO",
        *extra,
    ]
    process = Process(args, env, log_dir / f"worker-{name}.log")
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if "ready." in process.output():
            return process
        if process.popen.poll() is not None:
            break
        time.sleep(0.2)
    process.stop()
    raise AssertionError(f"the worker did not start:\n{process.output()}")


def start_beat(env: dict[str, str], log_dir: Path) -> Process:
    schedule = log_dir / "beat-schedule"
    return Process(
        [str(BIN / "celery"), "-A", "workers", "beat", "-l", "INFO", "-s", str(schedule)],
        env,
        log_dir / "beat.log",
    )


def start_gateway(env: dict[str, str], log_dir: Path) -> tuple[Process, str]:
    """`flywheel gateway` as a process; returned once it has reconciled and is ready."""
    port = free_port()
    process = Process(
        [str(BIN / "flywheel"), "gateway", "--port", str(port)],
        env,
        log_dir / f"gateway-{port}.log",
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline and process.popen.poll() is None:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.stop()
    raise AssertionError(f"the gateway did not start:\n{process.output()}")


def admin_token(url: str) -> str:
    """An admin token in the database the processes will use."""
    engine = create_db_engine(url)
    with unit_of_work(create_session_factory(engine)) as session:
        _, token = auth_service.create_token(session, name="e2e", role=Role.admin)
    engine.dispose()
    return token


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (read from /proc: nothing matched by name)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def private_redis_args(port: int, directory: Path, binary: str = "redis-server") -> list[str]:
    """A redis-server of the test's own (never the machine's shared one), keeping nothing."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
            "no", "--dir", str(directory)]  # fmt: skip
