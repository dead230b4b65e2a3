"""Tracking benchmark: metric ingest throughput and run-search latency, each beside raw SQL.

Without --url a scratch Postgres database is created, migrated and served by `flywheel api` on a
free port, then dropped. With --url the running server is used, --database-url (its database)
feeds the baselines and the search seed, and the benchmark's experiments are deleted afterwards.
"""

import argparse
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
from common import expect
from psycopg import sql
from sqlalchemy import event
from sqlalchemy.engine import make_url

from app.auth.service import create_token
from app.core.db import create_db_engine, create_session_factory, unit_of_work
from app.core.migrate import upgrade
from app.core.security import Role
from app.tracking.repository import search_runs
from app.tracking.schemas import RunPage, RunSearch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "tracking.json"
LOCAL_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BATCH, BODY_POOL, THREADS, WARMUP, TIMED = 1_000, 256, (1, 8), 5, 50
JSON_HEADERS = {"Content-Type": "application/json"}
SEARCH = {"filter": "metrics.m0 > 0.5 and params.p1 = 'x'", "order_by": ["metrics.m1 DESC"]}
# The best hand-written form: walk the (key, value, run_id) index of m1 backwards. (Every run
# in the seed has m1, so no second query for runs without it is needed here.)
SEARCH_SQL = """
SELECT o.run_id FROM latest_metric o JOIN run r ON r.id = o.run_id
WHERE o.key = 'm1' AND r.experiment_id = %(experiment)s
  AND EXISTS (SELECT 1 FROM latest_metric m
              WHERE m.run_id = r.id AND m.key = 'm0' AND m.value > %(m0)s)
  AND EXISTS (SELECT 1 FROM run_param p
              WHERE p.run_id = r.id AND p.key = 'p1' AND p.value = %(p1)s)
ORDER BY o.value DESC, o.run_id DESC
LIMIT 101"""
METRIC_COLUMNS = '(run_id, key, value, step, "timestamp")'
COPY_SQL = f"COPY metric {METRIC_COLUMNS} FROM STDIN"
INGEST_TARGET, SEARCH_TARGET_MS = 100_000, 100.0
MLFLOW_INGEST, MLFLOW_SEARCH = "~12,500 points/s (8 threads)", "p95 250 ms at 13,000 runs"
NONE: tuple[str, None, str] = ("", None, "")
Step = Callable[[], int]


def libpq(url: str) -> str:
    """A SQLAlchemy URL as a plain libpq DSN for psycopg."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def sqlalchemy_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


class Api:
    """The few API calls the benchmark needs; remembers the experiments it creates."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url.rstrip("/"), token
        self.experiments: list[int] = []

    def client(self) -> httpx.Client:
        auth = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.url, headers=auth, timeout=120)

    def create(self, path: str, body: dict[str, Any]) -> int:
        with self.client() as client:
            return int(expect(client.post(path, json=body), 201)["id"])

    def experiment(self, prefix: str) -> int:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.experiments.append(self.create("/api/v1/experiments", {"name": name}))
        return self.experiments[-1]

    def run(self, experiment_id: int, name: str) -> int:
        return self.create("/api/v1/runs", {"experiment_id": experiment_id, "name": name})


@contextmanager
def serve(db_url: str, workers: int) -> Iterator[str]:
    """`flywheel api` on a free port; yields its base URL once /readyz answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as home:
        (prom := Path(home) / "prometheus").mkdir()
        env = {**os.environ, "FLYWHEEL_DATABASE_URL": db_url, "FLYWHEEL_HOME": home}
        env["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
        command = [str(Path(sys.executable).parent / "flywheel"), "api", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--workers", str(workers)]
        log_path, url = Path(home) / "server.log", f"http://127.0.0.1:{port}"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
            try:
                deadline = time.monotonic() + 60
                while not ready(url) and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.2)
                if not ready(url):
                    raise RuntimeError(f"the API did not start:\n{log_path.read_text()[-3000:]}")
                yield url
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def ready(url: str) -> bool:
    with suppress(httpx.TransportError):
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    return False


@contextmanager
def local_stack(server_url: str, workers: int) -> Iterator[tuple[Api, str]]:
    """A scratch database, migrated, with an admin token and the API serving it."""
    name, admin = f"flywheel_bench_{uuid.uuid4().hex[:10]}", libpq(server_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        db_url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        upgrade(db_url)
        engine = create_db_engine(db_url)
        with unit_of_work(create_session_factory(engine)) as session:
            _, token = create_token(session, name="benchmark", role=Role.admin)
        engine.dispose()
        with serve(db_url, workers) as url:
            print(f"database {name}; API at {url} with {workers} worker(s)")
            yield Api(url, token), db_url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))


def hammer(threads: int, seconds: float, make_step: Callable[[int, ExitStack], Step]) -> float:
    """Call each thread's step for `seconds`, all starting together; return points per second."""
    with ExitStack() as stack, ThreadPoolExecutor(threads) as pool:
        steps = [make_step(i, stack) for i in range(threads)]  # set-up and warm-up, untimed
        barrier = threading.Barrier(threads)

        def loop(step: Step) -> tuple[int, float, float]:
            barrier.wait()
            total, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                total += step()
            return total, start, time.perf_counter()

        done = list(pool.map(loop, steps))
    elapsed = max(end for *_, end in done) - min(start for _, start, _ in done)
    return sum(total for total, *_ in done) / elapsed


def points(batch: int, rng: np.random.Generator) -> list[tuple[str, float, int, int]]:
    """One batch: keys m0..m9, 100 steps each, the steps rising from batch to batch."""
    values, now = rng.random(BATCH), int(time.time() * 1000)
    return [(f"m{i % 10}", float(values[i]), batch * 100 + i // 10, now + i) for i in range(BATCH)]


def ingest(api: Api, dsn: str, seconds: float, rng: np.random.Generator) -> dict[int, list[float]]:
    """Points/s through the API and straight into `metric`, for each thread count."""
    experiment = api.experiment("bench_ingest")
    batches = [points(b, rng) for b in range(BODY_POOL)]
    fields = ("key", "value", "step", "timestamp")
    encoded = [
        json.dumps({"metrics": [dict(zip(fields, p, strict=True)) for p in b]}).encode()
        for b in batches
    ]

    def via_api(index: int, stack: ExitStack) -> Step:
        url = f"/api/v1/runs/{api.run(experiment, f'api-{index}')}/metrics"
        client = stack.enter_context(api.client())
        cycle = itertools.cycle(encoded[index * 31 :] + encoded[: index * 31])

        def step() -> int:
            response = client.post(url, content=next(cycle), headers=JSON_HEADERS)
            return int(expect(response)["written"])

        step()
        return step

    def direct(index: int, stack: ExitStack) -> Step:
        run = api.run(experiment, f"sql-{index}")
        conn = stack.enter_context(psycopg.connect(dsn))
        cycle = itertools.cycle([[(run, *p) for p in b] for b in batches[index : index + 16]])

        def step() -> int:
            with conn.cursor() as cursor, cursor.copy(COPY_SQL) as copy:
                for row in next(cycle):
                    copy.write_row(row)
            conn.commit()
            return BATCH

        step()
        return step

    rates: dict[int, list[float]] = {}
    for threads in THREADS:
        rates[threads] = [hammer(threads, seconds, via_api), hammer(threads, seconds, direct)]
        api_rate, sql_rate = rates[threads]
        print(
            f"ingest, {threads} thread(s): API {api_rate:,.0f} points/s, "
            f"direct SQL {sql_rate:,.0f} points/s, ratio {api_rate / sql_rate:.2f}"
        )
    return rates


def seed(dsn: str, experiment: int, runs: int, rng: np.random.Generator) -> None:
    """COPY finished runs with params p0..p4 and metrics m0..m4 (latest and history), VACUUM."""
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    p1 = np.array(["x", "y", "z", "w"])[rng.integers(0, 4, runs)]
    other, metrics = rng.integers(0, 1000, (runs, 4)), rng.random((runs, 5))
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        columns = "experiment_id, name, status, start_time, end_time, duration_ms, created_at"
        with cur.copy(f"COPY run ({columns}) FROM STDIN") as copy:
            for i in range(runs):
                start = now - timedelta(seconds=runs - i)
                copy.write_row((experiment, f"seed-{i}", "finished", start, start, 0, start))
        cur.execute("SELECT id FROM run WHERE experiment_id = %s ORDER BY id", (experiment,))
        ids = [row[0] for row in cur.fetchall()]
        with cur.copy("COPY run_param (run_id, key, value) FROM STDIN") as copy:
            for i, run in enumerate(ids):
                values = (other[i, 0], p1[i], *other[i, 1:])
                for k, value in enumerate(values):
                    copy.write_row((run, f"p{k}", str(value)))
        for table in ("latest_metric", "metric"):
            with cur.copy(f"COPY {table} {METRIC_COLUMNS} FROM STDIN") as copy:
                for i, run in enumerate(ids):
                    for k in range(5):
                        copy.write_row((run, f"m{k}", float(metrics[i, k]), 0, now_ms))
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM (ANALYZE)")  # statistics now, and no autovacuum during the timings


def timed(call: Callable[[], Any]) -> tuple[list[float], list[Any]]:
    """WARMUP untimed calls, then TIMED timed ones: (milliseconds, every result)."""
    millis, results = [], []
    for i in range(WARMUP + TIMED):
        start = time.perf_counter()
        results.append(call())
        if i >= WARMUP:
            millis.append((time.perf_counter() - start) * 1000)
    return millis, results


def stats(name: str, millis: list[float]) -> dict[str, float]:
    p50, p95 = (float(p) for p in np.percentile(millis, [50, 95]))
    print(f"search {name}: p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {max(millis):.1f} ms")
    return {"p50": p50, "p95": p95, "max": max(millis)}


def search(api: Api, db_url: str, runs: int, rng: np.random.Generator) -> dict[str, Any]:
    """Seed, then time the API's search and the hand-written SQL for the same question."""
    experiment, dsn, began = api.experiment("bench_search"), libpq(db_url), time.perf_counter()
    seed(dsn, experiment, runs, rng)
    print(f"seeded {runs:,} runs in {time.perf_counter() - began:.1f} s")
    payload = json.dumps({"experiment_ids": [experiment], **SEARCH, "page_size": 100}).encode()
    with api.client() as client:
        api_ms, responses = timed(
            lambda: client.post("/api/v1/runs/search", content=payload, headers=JSON_HEADERS)
        )
    params = {"experiment": experiment, "m0": 0.5, "p1": "x"}
    # no server-side prepared statements, as the API (app.core.db) and for the same reason
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        sql_ms, answers = timed(lambda: conn.execute(SEARCH_SQL, params).fetchall())
    expected = [row[0] for row in answers[-1][:100]]
    for response in responses:
        items = expect(response)["items"]
        m1 = [item["metrics"]["m1"] for item in items]
        assert len(items) == 100, f"expected 100 runs, got {len(items)}"
        assert m1 == sorted(m1, reverse=True), "runs are not sorted by metrics.m1 DESC"
        assert all(i["metrics"]["m0"] > 0.5 and i["params"]["p1"] == "x" for i in items)
        assert [item["id"] for item in items] == expected, "the API and the SQL disagree"
    result = {"api": stats("API", api_ms), "sql": stats("SQL", sql_ms)}
    print(f"search ratio API p95 / SQL p95: {result['api']['p95'] / result['sql']['p95']:.1f}")
    profile_search(db_url, experiment)
    return result


def profile_search(db_url: str, experiment: int) -> None:
    """In-process: time each statement the search issues and serialisation; EXPLAIN the first."""
    engine, log = create_db_engine(db_url), list[list[Any]]()
    event.listen(engine, "before_cursor_execute", lambda *a: log.append([*a[2:4], time.time()]))
    event.listen(engine, "after_cursor_execute", lambda *a: log[-1].append(time.time()))
    query = RunSearch.model_validate({"experiment_ids": [experiment], **SEARCH})
    for _ in range(3):  # the last pass is reported
        log.clear()
        with create_session_factory(engine)() as session:
            start = time.perf_counter()
            rows, _ = search_runs(session, query)
            loaded = time.perf_counter()
            RunPage(items=rows).model_dump_json()
            done = time.perf_counter()
    sql_ms = [(entry[3] - entry[2]) * 1000 for entry in log]
    print(
        f"search in-process: load {(loaded - start) * 1000:.1f} ms, of which SQL "
        f"{sum(sql_ms):.1f} ms; serialise {(done - loaded) * 1000:.1f} ms"
    )
    for (statement, *_), ms in zip(log, sql_ms, strict=True):
        print(f"  {ms:6.1f} ms  {' '.join(statement.split())[:100]}")
    with engine.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + log[0][0], log[0][1])
        print("EXPLAIN ANALYZE of the API's search query:", *plan.scalars(), sep="\n  ")
    engine.dispose()


def summarise(rates: dict[int, list[float]], found: dict[str, Any], runs: int) -> list[Any]:
    """One row per measurement, beside its same-run baseline, target and MLflow figure."""
    table: list[tuple[Any, ...]] = []
    for threads, (api_rate, sql_rate) in rates.items():
        goal = (f"≥ {INGEST_TARGET:,}", api_rate >= INGEST_TARGET, MLFLOW_INGEST)
        name = f"ingest points/s, {threads} thread(s)"
        table.append((name, round(api_rate), round(sql_rate), *(goal if threads == 8 else NONE)))
    for stat in ("p50", "p95", "max"):
        value, base = round(found["api"][stat], 1), round(found["sql"][stat], 1)
        goal = (f"≤ {SEARCH_TARGET_MS:g}", value <= SEARCH_TARGET_MS, MLFLOW_SEARCH)
        name = f"search {stat} ms, {runs:,} runs"
        table.append((name, value, base, *(goal if stat == "p95" else NONE)))
    keys = ("measurement", "value", "baseline", "target", "met", "mlflow")
    return [dict(zip(keys, r, strict=True)) | {"ratio": round(r[1] / r[2], 2)} for r in table]


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| measurement | Flywheel | baseline (same run) | ratio | target | MLflow 3 reference |"
    lines = [head, "|---" * 6 + "|"]
    for r in rows:
        verdict = {True: " (met)", False: " (missed)", None: ""}[r["met"]]
        lines.append(
            f"| {r['measurement']} | {r['value']:,} | {r['baseline']:,} | {r['ratio']} "
            f"| {r['target']}{verdict} | {r['mlflow']} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="a running API (default: start one on a scratch database)")
    parser.add_argument("--token", help="an editor or admin token for --url")
    parser.add_argument("--database-url", help="the database behind --url, for the baselines")
    parser.add_argument("--runs", type=int, default=100_000, help="runs seeded for the search")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each ingest test")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (local server)")
    args = parser.parse_args()
    if args.url and not (args.token and args.database_url):
        parser.error("--url needs --token and --database-url")
    return args


def delete_experiments(dsn: str, ids: list[int]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM experiment WHERE id = ANY(%s)", (ids,))


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    args, began = parse_args(), time.perf_counter()
    load = [round(x, 2) for x in os.getloadavg()]
    print(f"load average before: {load} on {os.cpu_count()} CPUs (other work skews timings)")
    rng = np.random.default_rng(20261127)
    with ExitStack() as stack:
        if args.url:
            api, db_url = Api(args.url, args.token), sqlalchemy_url(args.database_url)
            stack.callback(delete_experiments, libpq(db_url), api.experiments)
        else:
            api, db_url = stack.enter_context(local_stack(LOCAL_SERVER, args.workers))
        rates = ingest(api, libpq(db_url), args.seconds, rng)
        found = search(api, db_url, args.runs, rng)
    rows = summarise(rates, found, args.runs)
    print(f"\n{markdown(rows)}\n\ntotal {time.perf_counter() - began:.0f} s")
    meta = {"runs": args.runs, "seconds": args.seconds, "workers": args.workers, "url": args.url}
    meta["load_average_before"] = load
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {"measured_at": datetime.now(UTC).isoformat(), **meta, "rows": rows}
    RESULTS.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
