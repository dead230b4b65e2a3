"""Dispatch benchmark: git push webhook to task start, and per-task orchestration overhead, each
beside a baseline measured in the same run.

A scratch Postgres database (migrated), a Redis database of its own (flushed before and after),
`flywheel api` (1 uvicorn worker) and one Celery worker are started, used and torn down.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from queue import Queue
from typing import Any

import httpx
import numpy as np
import redis
from common import expect

from app.auth.service import create_token
from app.core.db import create_db_engine, create_session_factory, unit_of_work
from app.core.migrate import upgrade
from app.core.security import Role

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tests` is not installed; its helpers are imported from here
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

from tests.dbutil import scratch_postgres  # noqa: E402
from tests.e2e import services  # noqa: E402
from tests.e2e.ci_flow import github_push, wait_run  # noqa: E402
from tests.pipelines.helpers import git, make_repo  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "dispatch.json"
LOCAL_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
NOOP = 'def run(workdir, **kwargs):\n    return "ok"\n'
CHAIN, CHAIN_RUNS, REDIS_SAMPLES, WARMUP, WARMUP_PUSHES = 5, 5, 50, 5, 2
DISPATCH_TARGET_MS, OVERHEAD_TARGET_MS = 250.0, 100.0
# Per push: client receipt of the 202 vs server stamps (same machine, same clock).
PARTS = {
    "latency": "202 received -> task started",
    "api": "run created -> 202 received",
    "advance": "run created -> task queued",
    "handoff": "task queued -> task started",
}


def epoch(stamp: str) -> float:
    """An ISO timestamp from the API as seconds since the epoch, comparable with time.time()."""
    return datetime.fromisoformat(stamp).timestamp()


@contextmanager
def local_stack(workers: int, redis_db: int) -> Iterator[tuple[str, str, services.Process, Path]]:
    """(API URL, admin token, worker, scratch dir) on a scratch database and a Redis db of its
    own, with `flywheel api` and one Celery worker; all gone afterwards."""
    broker = services.redis_url(redis_db)
    services.require_redis(broker)  # pings and flushes
    with ExitStack() as stack:
        stack.callback(redis.Redis.from_url(broker).flushdb)  # runs last, after the worker
        db_url = stack.enter_context(scratch_postgres(LOCAL_SERVER, prefix="flywheel_bench"))
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flywheel-bench-")))
        upgrade(db_url)
        engine = create_db_engine(db_url)
        with unit_of_work(create_session_factory(engine)) as session:
            _, token = create_token(session, name="benchmark", role=Role.admin)
        engine.dispose()
        env = services.service_env(db_url, broker, scratch / "home") | {"FLYWHEEL_API_WORKERS": "1"}
        api, url = services.start_api(env, scratch)
        stack.callback(api.stop)
        command = [str(services.BIN / "celery"), "-A", "workers", "worker", "-n", "bench@%h"]
        command += ["-P", "prefork", "-c", str(workers), "-l", "WARNING"]
        worker = services.Process(command, env, scratch / "worker.log")
        stack.callback(worker.stop)
        name = db_url.rsplit("/", 1)[1]
        print(f"database {name}; Redis db {redis_db}; API at {url}; worker -c {workers}")
        yield url, token, worker, scratch


def redis_round_trip(url: str, samples: int) -> list[float]:
    """LPUSH here, BRPOP on another connection in a thread: ms until the pop returns."""
    key, arrivals = "bench:round-trip", Queue[float]()
    pusher, popper = redis.Redis.from_url(url), redis.Redis.from_url(url)

    def consume() -> None:
        for _ in range(WARMUP + samples):
            popper.brpop([key], timeout=10)
            arrivals.put(time.perf_counter())

    thread, millis = threading.Thread(target=consume, daemon=True), []
    thread.start()
    for _ in range(WARMUP + samples):
        time.sleep(0.01)  # let the consumer block in BRPOP again
        start = time.perf_counter()
        pusher.lpush(key, b"x")
        millis.append((arrivals.get(timeout=10) - start) * 1000)
    thread.join()
    pusher.close()
    popper.close()
    return millis[WARMUP:]


def finished(http: httpx.Client, run_id: int) -> dict[str, Any]:
    run = wait_run(http, run_id, timeout=120)
    if run["status"] != "succeeded":
        raise RuntimeError(f"run {run_id} did not succeed:\n{json.dumps(run, indent=1)}")
    return run


def push(
    hooks: httpx.Client, http: httpx.Client, hook: dict[str, str], poll: float
) -> dict[str, float]:
    """One signed push; poll until its task has started, then wait for the run to end."""
    headers, body = github_push(hook["secret"], hook["repo_url"], hook["commit"])
    response = hooks.post(hook["path"], content=body, headers=headers)
    received = time.time()
    [run_id] = expect(response, 202)["pipeline_run_ids"]
    run = expect(http.get(f"/api/v1/pipeline-runs/{run_id}"))
    while not run["tasks"][0]["started_at"]:
        if time.time() - received > 120:
            raise RuntimeError(f"the task of run {run_id} never started: {run}")
        time.sleep(poll)
        run = expect(http.get(f"/api/v1/pipeline-runs/{run_id}"))
    finished(http, run_id)
    task, created = run["tasks"][0], epoch(run["created_at"])
    started, queued = epoch(task["started_at"]), epoch(task["queued_at"])
    seconds = {
        "latency": started - received,
        "api": received - created,
        "advance": queued - created,
        "handoff": started - queued,
    }
    return {k: v * 1000 for k, v in seconds.items()}


def percentiles(millis: list[float]) -> dict[str, float]:
    p50, p95 = (float(p) for p in np.percentile(millis, [50, 95]))
    return {"p50": p50, "p95": p95, "max": float(max(millis))}


def dispatch(
    hooks: httpx.Client, http: httpx.Client, hook: dict[str, str], pushes: int, poll_ms: float
) -> tuple[dict[str, dict[str, float]], list[dict[str, float]]]:
    """Sequential pushes: dispatch latency and where it goes."""
    samples = [push(hooks, http, hook, poll_ms / 1000) for _ in range(pushes)]
    found = {k: percentiles([s[k] for s in samples]) for k in PARTS}
    for key, label in PARTS.items():
        p = found[key]
        print(f"  {label:30} p50 {p['p50']:7.1f}  p95 {p['p95']:7.1f}  max {p['max']:7.1f} ms")
    return found, samples


def chain_run(http: httpx.Client, source: str, commit: str) -> dict[str, float]:
    """One run of chain5; its end-to-end time split into the tasks' own time and the gaps."""
    body = {"source": source, "commit": commit}
    run = finished(http, expect(http.post("/api/v1/pipelines/chain5/runs", json=body), 202)["id"])
    tasks = sorted(run["tasks"], key=lambda t: epoch(t["started_at"]))
    starts = [epoch(t["started_at"]) for t in tasks]
    ends = [epoch(t["finished_at"]) for t in tasks]
    created, done = epoch(run["created_at"]), epoch(run["finished_at"])
    own = sum(end - start for start, end in zip(starts, ends, strict=True))
    seconds = {
        "end_to_end": done - created,
        "own": own,
        "overhead_per_task": (done - created - own) / CHAIN,
        "task_mean": own / CHAIN,
        "first_start": starts[0] - created,
        "handoff_mean": float(np.mean(np.subtract(starts[1:], ends[:-1]))),
        "last_to_run_end": done - ends[-1],
    }
    return {k: v * 1000 for k, v in seconds.items()}


def chain(http: httpx.Client, source: str, commit: str) -> list[dict[str, float]]:
    runs = []
    for i in range(CHAIN_RUNS):
        runs.append(r := chain_run(http, source, commit))
        print(
            f"  run {i + 1}: end-to-end {r['end_to_end']:7.0f} ms, tasks' own {r['own']:7.0f} ms,"
            f" overhead/task {r['overhead_per_task']:5.1f} ms (first start {r['first_start']:.0f},"
            f" handoff mean {r['handoff_mean']:.0f}, last -> run end {r['last_to_run_end']:.0f})"
        )
    return runs


def setup(http: httpx.Client, scratch: Path) -> dict[str, str]:
    """A git repo with noop.py, the two pipelines and a git source; returns the hook's details."""
    repo, _ = make_repo(scratch)
    (repo / "noop.py").write_text(NOOP)
    git(repo, "add", "noop.py")
    git(repo, "commit", "-q", "-m", "noop step")
    commit, repo_url = git(repo, "rev-parse", "HEAD"), f"file://{repo}"
    params = {"function": "noop:run"}
    steps = [
        {"name": f"step{i}", "type": "python", "params": params}
        | ({"depends_on": [f"step{i - 1}"]} if i > 1 else {})
        for i in range(1, CHAIN + 1)
    ]
    specs = {"dispatch": [{"name": "noop", "type": "python", "params": params}], "chain5": steps}
    for name, tasks in specs.items():
        expect(http.post("/api/v1/pipelines", json={"name": name, "spec": {"tasks": tasks}}), 201)
    body = {"name": "bench-repo", "repo_url": repo_url, "branch": "main", "pipeline": "dispatch"}
    source = expect(http.post("/api/v1/sources/git", json=body), 201)
    hook = {"secret": source["secret"], "path": source["hook_path"], "repo_url": repo_url}
    return hook | {"commit": commit, "source": "bench-repo"}


def summarise(found: dict[str, Any], base: dict[str, float], runs: list[Any]) -> list[Any]:
    """One row per measurement beside its same-run baseline and target."""
    redis_base = "Redis LPUSH -> BRPOP"
    table: list[tuple[Any, ...]] = []
    for stat in ("p50", "p95", "max"):
        goal = (f"≤ {DISPATCH_TARGET_MS:g}", found["latency"][stat] <= DISPATCH_TARGET_MS)
        name = f"dispatch {stat} ms (202 -> task started)"
        row = (name, found["latency"][stat], base[stat], redis_base)
        table.append((*row, *(goal if stat == "p95" else ("", None))))
    overhead = float(np.median([r["overhead_per_task"] for r in runs]))
    task_mean = float(np.mean([r["task_mean"] for r in runs]))
    goal = (f"≤ {OVERHEAD_TARGET_MS:g}", overhead <= OVERHEAD_TARGET_MS)
    name = f"overhead ms per task, chain of {CHAIN} (median of {len(runs)})"
    table.append((name, overhead, task_mean, "a task's own run time (mean)", *goal))
    keys = ("measurement", "value", "baseline", "baseline_is", "target", "met")
    return [
        dict(zip(keys, (r[0], round(r[1], 1), round(r[2], 2), *r[3:]), strict=True))
        | {"ratio": round(r[1] / r[2], 2)}
        for r in table
    ]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| measurement | Flywheel | baseline (same run) | ratio | target |", "|---" * 5 + "|"]
    for r in rows:
        verdict = {True: " (met)", False: " (missed)", None: ""}[r["met"]]
        lines.append(
            f"| {r['measurement']} | {r['value']:,} | {r['baseline']:,} ({r['baseline_is']}) "
            f"| {r['ratio']:,} | {r['target']}{verdict} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pushes", type=int, default=50, help="timed webhook pushes")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker concurrency")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="poll interval until started")
    parser.add_argument("--redis-db", type=int, default=12, help="Redis db used (and flushed)")
    return parser.parse_args()


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    args, began = parse_args(), time.perf_counter()
    load = [round(x, 2) for x in os.getloadavg()]
    print(f"load average before: {load} on {os.cpu_count()} CPUs (other work skews timings)")
    with ExitStack() as stack:
        url, token, worker, scratch = stack.enter_context(local_stack(args.workers, args.redis_db))
        auth = {"Authorization": f"Bearer {token}"}
        http = stack.enter_context(httpx.Client(base_url=url, headers=auth, timeout=60))
        hooks = stack.enter_context(httpx.Client(base_url=url, timeout=60))  # no token: signed
        hook = setup(http, scratch)
        try:  # the worker's start-up (and the git mirror's clone) land in the warm-up pushes
            for _ in range(WARMUP_PUSHES):
                push(hooks, http, hook, 0.05)
        except Exception:
            print(f"worker log:\n{worker.output()[-3000:]}")
            raise
        base = percentiles(redis_round_trip(services.redis_url(args.redis_db), REDIS_SAMPLES))
        print(
            f"broker baseline, Redis LPUSH -> BRPOP: p50 {base['p50']:.2f} ms, "
            f"p95 {base['p95']:.2f} ms, max {base['max']:.2f} ms"
        )
        print(f"dispatch, {args.pushes} pushes, polling every {args.poll_ms:g} ms:")
        found, samples = dispatch(hooks, http, hook, args.pushes, args.poll_ms)
        ratio = found["latency"]["p50"] / base["p50"], found["latency"]["p95"] / base["p95"]
        print(f"  dispatch / Redis round trip: p50 x{ratio[0]:,.0f}, p95 x{ratio[1]:,.0f}")
        print(f"orchestration, {CHAIN_RUNS} runs of chain5 ({CHAIN} python tasks in a chain):")
        runs = chain(http, hook["source"], hook["commit"])
    rows = summarise(found, base, runs)
    print(f"\n{markdown(rows)}\n\ntotal {time.perf_counter() - began:.0f} s")
    meta = {"pushes": args.pushes, "workers": args.workers, "poll_ms": args.poll_ms}
    document = {"measured_at": datetime.now(UTC).isoformat(), **meta, "load_average_before": load}
    document |= {"rows": rows, "dispatch": found, "redis_round_trip": base, "chain_runs": runs}
    document["pushes_ms"] = [{k: round(v, 1) for k, v in s.items()} for s in samples]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
