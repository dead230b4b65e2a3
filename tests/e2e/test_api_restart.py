"""`flywheel api --workers 2` restarted with SIGHUP, under load, on a host whose cores are
kept busy: every worker is replaced and no request is lost or answered with an error.

uvicorn's defaults failed both halves here: its 5 s health check killed workers that were
still importing, and a SIGHUP gave up ("not ready in time ... aborting the restart").
"""

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.core.migrate import upgrade
from tests.dbutil import scratch_postgres
from tests.e2e.services import Process, admin_token, children, redis_url, service_env, start_api

pytestmark = pytest.mark.slow

SPIN = "while True: pass"


@pytest.fixture
def database(database_url: str, requires_postgres: None) -> Iterator[str]:
    with scratch_postgres(database_url, prefix="flywheel_restart") as url:
        upgrade(url)
        yield url


@contextlib.contextmanager
def busy_cores(count: int = 2) -> Iterator[None]:
    """A CPU hog of the test's own, stopped by pid."""
    hogs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def api_workers(pid: int) -> set[int]:
    """uvicorn's worker processes (spawned children running the server, not helpers)."""
    found = set()
    for child in children(pid):
        with contextlib.suppress(OSError):
            if b"multiprocessing.spawn" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
    return found


class Load:
    """Threads that create experiments on fresh connections until stopped, keeping every
    answer: a request the API accepted must end in a 201."""

    def __init__(self, url: str, token: str, threads: int = 4) -> None:
        self.url, self.token = url, token
        self.stop = threading.Event()
        self.created: list[str] = []
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, index: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}", "Connection": "close"}
        sent = 0
        while not self.stop.is_set():
            name = f"load-{index}-{sent}"
            sent += 1
            try:
                answer = httpx.post(
                    f"{self.url}/api/v1/experiments",
                    json={"name": name},
                    headers=headers,
                    timeout=120,
                )
            except httpx.HTTPError as exc:
                self.failures.append(f"{name}: {exc!r}")
                continue
            if answer.status_code == 201:
                self.created.append(name)
            else:
                self.failures.append(f"{name}: {answer.status_code} {answer.text}")

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=300)


def experiment_names(url: str, token: str) -> set[str]:
    names: set[str] = set()
    params: dict[str, str | int] = {"page_size": 500}
    while True:
        page = httpx.get(
            f"{url}/api/v1/experiments", params=params, headers={"Authorization": f"Bearer {token}"}
        ).json()
        names |= {e["name"] for e in page["items"]}
        if not page.get("next_page_token"):
            return names
        params["page_token"] = page["next_page_token"]


def wait_until_replaced(api: Process, old: set[int]) -> set[int]:
    deadline = time.monotonic() + 600  # generous: two imports of the whole stack, cores busy
    while time.monotonic() < deadline:
        current = api_workers(api.popen.pid)
        if len(current) == 2 and not current & old:
            return current
        assert api.popen.poll() is None, api.output()
        time.sleep(0.5)
    raise AssertionError(f"workers {old} were not all replaced:\n{api.output()}")


def wait_until_both_serve(api: Process) -> set[int]:
    deadline = time.monotonic() + 600
    while api.output().count("Application startup complete.") < 2:
        assert time.monotonic() < deadline, api.output()
        assert api.popen.poll() is None, api.output()
        time.sleep(0.5)
    workers = api_workers(api.popen.pid)
    assert len(workers) == 2, (workers, api.output())
    return workers


def test_sighup_replaces_every_worker_under_load_and_loses_no_request(
    database: str, tmp_path: Path
) -> None:
    env = service_env(database, redis_url(5), tmp_path / "home")
    token = admin_token(database)
    with busy_cores():
        api, url = start_api(env, tmp_path, "--workers", "2")
        try:
            workers = wait_until_both_serve(api)
            with Load(url, token) as load:
                for _ in range(2):
                    while len(load.created) < 5:  # traffic is flowing before each restart
                        assert not load.failures, load.failures
                        time.sleep(0.1)
                    done_before = len(load.created)
                    api.popen.send_signal(signal.SIGHUP)
                    workers = wait_until_replaced(api, workers)
                    while len(load.created) < done_before + 5:  # the new workers answer
                        assert api.popen.poll() is None, api.output()
                        time.sleep(0.1)
            assert load.failures == []
            assert "aborting the restart" not in api.output()
            assert api.popen.poll() is None  # the parent kept running throughout
            assert set(load.created) <= experiment_names(url, token)
        finally:
            api.stop()
