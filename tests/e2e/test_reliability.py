"""No loss: a worker killed mid-task, and a broker down while work is created.

Real processes throughout: the API, Celery workers and beat, Postgres, and Redis (a private
redis-server for the outage test, so the machine's shared one is never stopped).
"""

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.migrate import upgrade
from tests.dbutil import scratch_postgres
from tests.e2e.ci_flow import wait_run
from tests.e2e.services import (
    Process,
    admin_token,
    children,
    free_port,
    private_redis_args,
    redis_url,
    require_redis,
    service_env,
    start_api,
    start_beat,
    start_worker,
)
from tests.pipelines.helpers import git, make_repo

pytestmark = pytest.mark.slow
SLOW_TASK = """import os
import time


def run(workdir, seconds=8, **kwargs):
    time.sleep(seconds)
    return "slept"


def hold(workdir, release, **kwargs):
    # runs until the test lets it finish: no race between the task and a slow machine
    while not os.path.exists(release):
        time.sleep(0.2)
    return "released"


def tick(workdir, path, seconds=3600, **kwargs):
    # a side effect the test can watch: its pid, then a line every 0.2 s until stopped
    with open(path, "a") as out:
        out.write(f"{os.getpid()}\\n")
        out.flush()
        for _ in range(int(seconds / 0.2)):
            out.write("tick\\n")
            out.flush()
            time.sleep(0.2)
    return "ticked"
"""


def make_slow_repo(root: Path) -> tuple[str, str]:
    repo, _ = make_repo(root)
    (repo / "slow.py").write_text(SLOW_TASK)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "slow task")
    return f"file://{repo}", git(repo, "rev-parse", "HEAD")


def prepare(
    http: httpx.Client, repo_url: str, seconds: int = 8, function: str = "slow:run", **args: Any
) -> None:
    spec = {
        "tasks": [
            {
                "name": "slow",
                "type": "python",
                "params": {"function": function, "args": {"seconds": seconds, **args}},
            }
        ]
    }
    http.post("/api/v1/pipelines", json={"name": "slow", "spec": spec}).raise_for_status()
    http.post(
        "/api/v1/sources/git", json={"name": "repo", "repo_url": repo_url, "pipeline": "slow"}
    ).raise_for_status()


def start_running(http: httpx.Client, commit: str, worker: Process) -> dict[str, Any]:
    """Start the slow pipeline and return once its task is running on a worker."""
    run: dict[str, Any] = http.post(
        "/api/v1/pipelines/slow/runs", json={"source": "repo", "commit": commit}
    ).json()
    deadline = time.monotonic() + 300  # generous: a loaded machine starts workers slowly
    while http.get(f"/api/v1/pipeline-runs/{run['id']}").json()["tasks"][0]["status"] != "running":
        assert time.monotonic() < deadline, worker.output()
        time.sleep(0.2)
    return run


@pytest.fixture
def database(database_url: str, requires_postgres: None) -> Iterator[str]:
    with scratch_postgres(database_url, prefix="flywheel_reliability") as url:
        upgrade(url)
        yield url


def test_worker_killed_mid_task_the_run_still_completes(database: str, tmp_path: Path) -> None:
    broker = redis_url(6)
    require_redis(broker)
    env = service_env(database, broker, tmp_path / "home") | {
        "FLYWHEEL_TASK_HEARTBEAT_SECONDS": "1",
        "FLYWHEEL_SWEEP_SECONDS": "1",
    }
    api, base = start_api(env, tmp_path)
    beat = start_beat(env, tmp_path)
    first = start_worker(env, tmp_path, "first", "-P", "prefork", "-c", "1")
    second: Process | None = None
    repo_url, commit = make_slow_repo(tmp_path)
    headers = {"Authorization": f"Bearer {admin_token(database)}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            release = tmp_path / "release"  # the task holds until it exists
            prepare(http, repo_url, function="slow:hold", release=str(release))
            run = start_running(http, commit, first)
            second = start_worker(env, tmp_path, "second", "-P", "prefork", "-c", "1")
            time.sleep(1)
            pool = children(first.popen.pid)  # the prefork child running the task
            assert pool, "the first worker has no pool process"
            first.popen.send_signal(signal.SIGKILL)  # the main process, then its pool, by pid
            for pid in pool:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            first.popen.wait()
            release.touch()  # only now may an attempt finish: the retry, on the survivor
            done = wait_run(http, run["id"], timeout=300)
            assert done["status"] == "succeeded", (done, second.output(), beat.output())
            task = done["tasks"][0]
            assert task["attempts"] >= 2 and task["outputs"]["return"] == "released"
            # the attempt that succeeded ran on the surviving worker
            ran = re.compile(r"Task pipelines\.execute_task\[\S+\] succeeded in")
            assert ran.search(second.output()), second.output()
            assert not ran.search(first.output()), first.output()
    finally:
        for process in (second, first, beat, api):
            if process is not None:
                process.stop()


def test_broker_down_while_a_run_is_created_nothing_is_lost(database: str, tmp_path: Path) -> None:
    port = free_port()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    redis_args = private_redis_args(port, redis_dir)
    broker = f"redis://127.0.0.1:{port}/0"

    def start_redis() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(redis_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if (
                subprocess.run(
                    ["redis-cli", "-p", str(port), "ping"], capture_output=True
                ).returncode
                == 0
            ):
                return process
            time.sleep(0.05)
        raise AssertionError("private redis did not start")

    redis = start_redis()
    env = service_env(database, broker, tmp_path / "home")
    api, base = start_api(env, tmp_path)
    beat = start_beat(env, tmp_path)
    worker = start_worker(env, tmp_path, "w", "-P", "prefork", "-c", "1")
    repo_url, commit = make_slow_repo(tmp_path)
    headers = {"Authorization": f"Bearer {admin_token(database)}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
            prepare(http, repo_url, seconds=1)
            redis.terminate()
            redis.wait()
            accepted = http.post(
                "/api/v1/pipelines/slow/runs", json={"source": "repo", "commit": commit}
            )
            assert accepted.status_code == 202, accepted.text
            run_id = accepted.json()["id"]
            time.sleep(3)
            assert http.get(f"/api/v1/pipeline-runs/{run_id}").json()["status"] == "queued"
            redis = start_redis()
            done = wait_run(http, run_id, timeout=120)
            assert done["status"] == "succeeded", (
                done,
                worker.output()[-3000:],
                beat.output()[-3000:],
            )
    finally:
        worker.stop()
        beat.stop()
        api.stop()
        redis.terminate()
        redis.wait()


def test_cancel_stops_a_running_task_and_its_side_effects(database: str, tmp_path: Path) -> None:
    """What cancelling means, not how fast: the run and its task end cancelled, the task's
    process is gone, and what it was doing stops (its ticks stop growing)."""
    broker = redis_url(5)
    require_redis(broker)
    env = service_env(database, broker, tmp_path / "home") | {
        "FLYWHEEL_TASK_HEARTBEAT_SECONDS": "1"
    }
    api, base = start_api(env, tmp_path)
    worker = start_worker(env, tmp_path, "w", "-P", "prefork", "-c", "1")
    repo_url, commit = make_slow_repo(tmp_path)
    ticks = tmp_path / "ticks"
    headers = {"Authorization": f"Bearer {admin_token(database)}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
            # an hour of ticking: only a cancel that works ends it within the test's deadlines
            prepare(http, repo_url, seconds=3600, function="slow:tick", path=str(ticks))
            run = start_running(http, commit, worker)
            wait_until(lambda: len(lines(ticks)) >= 3, "the task to tick", worker)
            task_pid = int(lines(ticks)[0])
            assert http.post(f"/api/v1/pipeline-runs/{run['id']}/cancel").status_code == 200
            done = wait_run(http, run["id"], timeout=300)
            assert done["status"] == "cancelled", (done, worker.output()[-3000:])
            assert done["tasks"][0]["status"] == "cancelled", done
            assert (done["tasks"][0]["outputs"] or {}).get("return") != "ticked"
            wait_until(lambda: not running(task_pid), "the task's process to exit", worker)
            settled = len(lines(ticks))
            time.sleep(2)  # ten ticks' time: a task still alive would have written more
            assert len(lines(ticks)) == settled, "the cancelled task kept working"
    finally:
        worker.stop()
        api.stop()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped (read from /proc, by pid)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(condition: Any, what: str, worker: Process, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{worker.output()}"
        time.sleep(0.2)
