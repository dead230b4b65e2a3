"""Serving benchmark: the Flywheel gateway beside a bare uvicorn app (the limit) and
`mlflow models serve`, on one LogisticRegression (20 numeric features, seeded synthetic data),
driven by the same load generator (wrk, one thread) in the same run.

Started, used and stopped: a scratch SQLite database (migrated), the control-plane API in
process (TestClient) to register the model and create the deployments, `flywheel gateway`
(which starts its replica processes), a bare Starlette app on uvicorn (this file with
--serve-bare, 1 worker, `predict_proba` on the same skops file) and `mlflow models serve`
(1 worker) from a bench-only venv, .bench/mlflow-venv, created with pip on the first run; its
model is trained there, with the same estimator, on the same CSV of the same seeded data.
Also measured: the gateway's overhead over the replica's own model latency, a cold start from
zero replicas, and a load step (concurrency 1 -> 32) until a second replica serves.
Servers, wrk and this script share the machine's cores: the CPU columns show who used what.

One row per request: `{"rows": [{f0..f19}]}` to the gateway and the bare app, the same row as
`{"dataframe_records": [...]}` to mlflow; every request carries an admin token (the gateway
checks it, the others get the same header and ignore it), and the check is also timed alone.
Needs wrk (`apt-get install wrk`); --profile needs py-spy (`.venv/bin/pip install py-spy`).
The mlflow venv by hand, if pip fails from here:
`python3.11 -m venv .bench/mlflow-venv && .bench/mlflow-venv/bin/pip install mlflow==3.17.2
scikit-learn==1.9.1`, then write those two lines to .bench/mlflow-venv/bench-requirements.txt.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import skops.io as sio
from common import expect
from fastapi.testclient import TestClient

from app.auth.service import create_token
from app.core.artifacts import ArtifactStore
from app.core.config import Settings
from app.core.db import create_db_engine, create_session_factory, unit_of_work
from app.core.jobs import JobContext
from app.core.migrate import upgrade
from app.core.security import Role
from app.main import create_app

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tests` is not installed; its helpers are imported from here
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

from serving_access import check_verdict, token_check_cost  # noqa: E402
from serving_baselines import add_mlflow, serve_bare, start_bare  # noqa: E402
from serving_measure import (  # noqa: E402 - the benchmarks folder is the script's path
    BIN,
    CONTENDED_CORES,
    CPUS,
    FEATURES,
    JSON,
    LOGGED,
    MAX_ITER,
    NO_LOGGING,
    TARGET,
    Server,
    free_port,
    markdown,
    measure,
    overhead,
    print_profile,
    profile,
    settle,
    verdicts,
    wait_http,
    wrk,
    wrk_script,
)

from tests.conftest import InlineJobs  # noqa: E402
from tests.registry.helpers import Registry  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
PROFILES = ROOT / "benchmarks" / "results"
MODEL, SEED, ROWS = "lr", 7, 5000
LEVELS = (1, 8, 32)
STEP_BASELINE_S = 5.0  # concurrency 1 before the step to 32
System = tuple[str, "Server", str, Path]  # name, process tree, URL, wrk script


# -- processes and CPU accounting --------------------------------------------------------------


# -- the model and its registration ------------------------------------------------------------


def synthetic(path: Path) -> pd.DataFrame:
    """Seeded rows, written as CSV and read back: both venvs train on these exact numbers."""
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(ROWS, len(FEATURES))).round(6)
    logits = x @ rng.normal(size=len(FEATURES)) + rng.normal(0, 1, ROWS)
    frame = pd.DataFrame(x, columns=FEATURES).assign(**{TARGET: (logits > 0).astype(int)})
    frame.to_csv(path, index=False)
    return pd.read_csv(path)


def fit(frame: pd.DataFrame) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=MAX_ITER).fit(frame[FEATURES], frame[TARGET])


@contextmanager
def control_plane(scratch: Path, url: str, frame: pd.DataFrame, model: Any) -> Iterator[TestClient]:
    """The API in process on the scratch database, the model registered (finalize job run
    inline, as the test fixture does); yields an admin client for the deployments."""
    upgrade(url)
    settings = Settings(home=scratch / "home", database_url=url, artifact_root=scratch / "art")
    engine = create_db_engine(url)
    factory = create_session_factory(engine)
    jobs = InlineJobs(JobContext(settings, ArtifactStore(settings.resolved_artifact_root), factory))
    with unit_of_work(factory) as session:
        _, token = create_token(session, name="benchmark", role=Role.admin)
    api = TestClient(create_app(settings, session_factory=factory, publish=jobs.publish))
    api.headers["Authorization"] = f"Bearer {token}"
    registry = Registry(api, scratch)
    dataset = registry.dataset_version(frame, name="synthetic-20")
    run_id = registry.run_with_model(model)
    expect(api.post("/api/v1/models", json={"name": MODEL}), 201)
    body = {"run_id": run_id, "artifact_path": "model.skops"}
    body |= {"dataset_version_id": dataset["id"], "target": TARGET}
    expect(api.post(f"/api/v1/models/{MODEL}/versions", json=body), 202)
    jobs.run()
    version = expect(api.get(f"/api/v1/models/{MODEL}/versions/1"))
    if version["status"] != "ready":
        raise RuntimeError(f"model version not ready: {json.dumps(version, indent=1)}")
    try:
        yield api
    finally:
        api.close()
        engine.dispose()


def deploy(
    api: TestClient, name: str, autoscaling: dict[str, Any], log_sample_rate: float = 1.0
) -> None:
    body = {
        "name": name,
        "variants": [{"name": "main", "model": f"{MODEL}/1"}],
        "log_sample_rate": log_sample_rate,
    }
    expect(api.post("/api/v1/deployments", json=body | {"autoscaling": autoscaling}), 201)


def actual(gateway: str, name: str, headers: dict[str, str]) -> dict[str, Any] | None:
    """The deployment's first variant as the gateway shows it (None until it has it); the
    state route wants a token, `headers` carries it."""
    response = httpx.get(f"{gateway}/gateway/deployments/{name}", headers=headers, timeout=30)
    return response.json()["variants"][0] if response.status_code == 200 else None


def wait_replicas(
    gateway: str, name: str, count: int, headers: dict[str, str], timeout: float = 120
) -> dict[str, Any]:
    """Until GET /gateway/deployments/{name} shows `count` replicas, all ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lane = actual(gateway, name, headers)
        if lane and len(lane["replicas"]) == count and all(r["ready"] for r in lane["replicas"]):
            return lane
        time.sleep(0.1)
    raise RuntimeError(f"{name}: {count} ready replicas did not show up: {lane}")


# -- the systems under test ---------------------------------------------------------------------


# -- load ----------------------------------------------------------------------------------------


# -- gateway specifics -------------------------------------------------------------------------


def cold_starts(
    api: TestClient, gateway: str, body: bytes, headers: dict[str, str], cycles: int
) -> dict[str, Any]:
    """min_replicas 0: a request on zero replicas waits for one; time to its answer, and the
    gateway's own spawn -> ready figure. Every measured cycle follows a scale to zero."""
    deploy(
        api,
        "cold",
        {
            "min_replicas": 0,
            "max_replicas": 1,
            "scale_to_zero_after_seconds": 1,
            "scale_down_stabilization_seconds": 0,
            "window_seconds": 1,
        },
    )
    deadline = time.monotonic() + 30
    while actual(gateway, "cold", headers) is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway never picked up deployment cold")
        time.sleep(0.1)
    samples = []
    with httpx.Client(base_url=gateway, timeout=120) as http:
        for cycle in range(cycles + 1):  # cycle 0: never started yet; not counted
            lane = actual(gateway, "cold", headers)
            assert lane is not None and not lane["replicas"], lane
            began = time.perf_counter()
            answer = http.post("/serve/cold/predict", content=body, headers=headers)
            seconds = time.perf_counter() - began
            if answer.status_code != 200:
                raise RuntimeError(f"cold request -> {answer.status_code}: {answer.text}")
            lane = actual(gateway, "cold", headers)
            assert lane is not None
            spawn = lane["cold_starts_seconds"][-1]
            kind = "first start" if cycle == 0 else f"after zero #{cycle}"
            print(f"  {kind:14} request -> answer {seconds:.2f} s; spawn -> ready {spawn:.2f} s")
            if cycle:
                samples.append(
                    {"request_to_answer_s": round(seconds, 3), "spawn_to_ready_s": spawn}
                )
            deadline, zero_at = time.monotonic() + 60, time.perf_counter()
            while (lane := actual(gateway, "cold", headers)) and lane["replicas"]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cold never scaled to zero: {lane['scaling_decisions']}")
                time.sleep(0.1)
            if cycle == 0:
                print(f"  scaled to zero {time.perf_counter() - zero_at:.1f} s after the answer")
            time.sleep(0.5)
    answer_s = [s["request_to_answer_s"] for s in samples]
    spawn_s = [s["spawn_to_ready_s"] for s in samples]
    return {
        "cycles": samples,
        "request_to_answer_median_s": round(float(np.median(answer_s)), 3),
        "request_to_answer_max_s": max(answer_s),
        "spawn_to_ready_median_s": round(float(np.median(spawn_s)), 3),
    }


def scale_up(
    api: TestClient, gateway: str, script: Path, headers: dict[str, str], limit: float
) -> dict[str, Any]:
    """Concurrency 1, then 32 sustained: seconds until the second replica is listed, ready,
    and has served (polling the gateway's actual state)."""
    policy = {"min_replicas": 1, "max_replicas": 2, "target_in_flight": 2, "window_seconds": 2}
    deploy(api, "step", policy | {"scale_down_stabilization_seconds": 300})
    wait_replicas(gateway, "step", 1, headers)
    url = f"{gateway}/serve/step/predict"
    wrk(url, script, 1, STEP_BASELINE_S)
    lane = actual(gateway, "step", headers)
    assert lane is not None
    if len(lane["replicas"]) != 1:
        raise RuntimeError(f"scaled at concurrency 1 already: {lane['scaling_decisions']}")
    command = ["wrk", "-t1", "-c32", f"-d{limit:g}s", "--timeout", "10s", "-s", str(script), url]
    step = time.perf_counter()
    load = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    marks: dict[str, float] = {}
    try:
        while time.perf_counter() - step < limit and load.poll() is None:
            lane = actual(gateway, "step", headers)
            replicas = lane["replicas"] if lane else []
            now = round(time.perf_counter() - step, 2)
            if len(replicas) >= 2:
                marks.setdefault("started_s", now)
                if all(r["ready"] for r in replicas):
                    marks.setdefault("ready_s", now)
                    if all(r["served"] > 0 for r in replicas):
                        marks["serving_s"] = now
                        break
            time.sleep(0.1)
    finally:
        load.send_signal(signal.SIGINT)
        try:
            load.wait(timeout=10)
        except subprocess.TimeoutExpired:
            load.kill()
            load.wait()
    if "serving_s" not in marks:
        print(f"  no second replica serving within {limit:g} s: {marks}")
        return {"serving_s": None, **marks, "decisions": lane["scaling_decisions"] if lane else []}
    print(
        f"  step 1 -> 32: second replica started {marks['started_s']:.1f} s, ready "
        f"{marks['ready_s']:.1f} s, serving {marks['serving_s']:.1f} s after the step"
    )
    return marks


# -- report --------------------------------------------------------------------------------------


# -- main ----------------------------------------------------------------------------------------


def code_version() -> dict[str, Any]:
    """The commit measured, and the files under app/ that differ from it (work in progress
    is measured too: say so)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "app").splitlines()]
    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return {"commit": commit, "app_changes": dirty}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up seconds per level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--overhead-requests", type=int, default=1000)
    parser.add_argument("--cold-starts", type=int, default=3, help="cycles after scale to zero")
    parser.add_argument("--scale-limit", type=float, default=60, help="give up after (s)")
    parser.add_argument("--no-mlflow", action="store_true", help="skip mlflow models serve")
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS,
        help=f"results JSON (default {RESULTS.relative_to(ROOT)}; a short trial run: elsewhere)",
    )
    parser.add_argument(
        "--logging-pairs",
        type=int,
        default=3,
        help="logging on/off measured this many times, alternately, per level (its cost is "
        "the median of the pairs: one pair is within the run-to-run noise)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the gateway and its replica under the top concurrency (needs py-spy in "
        "the venv: .venv/bin/pip install py-spy)",
    )
    parser.add_argument("--serve-bare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def on_sigterm(signum: int, _: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds the ExitStack: every process started is stopped


def require_tools(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk (the load generator) is missing: apt-get install wrk")
    if args.profile and not (BIN / "py-spy").exists():
        sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")


@contextmanager
def gateway_process(scratch: Path, url: str) -> Iterator[tuple[str, Server]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env |= {
        "FLYWHEEL_DATABASE_URL": url,
        "FLYWHEEL_HOME": str(scratch / "home"),
        "FLYWHEEL_ARTIFACT_ROOT": str(scratch / "art"),
    }
    args = [str(BIN / "flywheel"), "gateway", "--host", "127.0.0.1", "--port", str(port)]
    server = Server("flywheel gateway", args, env, scratch / "gateway.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/v2/health/ready", server)
        yield base, server
    finally:
        server.stop()


def main() -> None:
    args = parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare, args.port)
        return
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    require_tools(args)
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    began, load = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    code = code_version()
    changed = f", with uncommitted changes to {', '.join(code['app_changes'])}"
    print(f"code: {code['commit']}{changed if code['app_changes'] else ''}")
    print(f"load average before: {load} on {os.cpu_count()} CPUs; servers, wrk and this script")
    print("share them (other work skews timings; see the CPU columns)")
    levels = sorted(set(args.concurrency))
    rows: list[dict[str, Any]] = []
    repeats: list[dict[str, Any]] = []  # more logging on/off pairs, not in the table
    document: dict[str, Any] = {"measured_at": datetime.now(UTC).isoformat()}
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flywheel-serve-")))
        url = f"sqlite:///{scratch / 'flywheel.db'}"
        frame = synthetic(scratch / "train.csv")
        model = fit(frame)
        sio.dump(model, scratch / "model.skops")
        sample = {f: float(v) for f, v in zip(FEATURES, frame[FEATURES].iloc[0], strict=True)}
        body = json.dumps({"rows": [sample]}).encode()
        expected = model.predict_proba(pd.DataFrame([sample]))[0]
        api = stack.enter_context(control_plane(scratch, url, frame, model))
        print(f"model {MODEL}/1 registered and ready ({len(FEATURES)} float features, {ROWS} rows)")
        # Every request of the benchmark carries the admin token: the gateway checks it on
        # each data-plane and state request (its cost is measured with the rest). The bare app,
        # mlflow and the replica get the very same headers and ignore the token, so that every
        # system is sent identical request bytes.
        headers = JSON | {"Authorization": api.headers["Authorization"]}

        gateway, gw_server = stack.enter_context(gateway_process(scratch, url))
        deploy(api, "lr1", {"min_replicas": 1, "max_replicas": 1})
        deploy(api, "lr2", {"min_replicas": 2, "max_replicas": 2})
        # the same as lr1 without prediction logging: what logging costs on the request path
        deploy(api, "lr1q", {"min_replicas": 1, "max_replicas": 1}, log_sample_rate=0.0)
        lane1 = wait_replicas(gateway, "lr1", 1, headers)
        wait_replicas(gateway, "lr2", 2, headers)
        wait_replicas(gateway, "lr1q", 1, headers)
        print(f"gateway at {gateway} (pid {gw_server.pid}); lr1: 1 replica, lr2: 2 replicas ready")

        bare_url, bare = start_bare(scratch / "model.skops", scratch, stack)
        scripts = scratch / "wrk"
        scripts.mkdir()
        plain = scripts / "rows.lua"
        plain.write_text(wrk_script(body.decode(), headers))
        systems: list[System] = [
            ("bare uvicorn", bare, f"{bare_url}/predict", plain),
            (LOGGED, gw_server, f"{gateway}/serve/lr1/predict", plain),
            ("gateway, 2 replicas", gw_server, f"{gateway}/serve/lr2/predict", plain),
            (NO_LOGGING, gw_server, f"{gateway}/serve/lr1q/predict", plain),
        ]
        for name, _, target, _ in systems:  # the same answer everywhere before timing anything
            got = expect(httpx.post(target, content=body, headers=headers))["probabilities"][0]
            if float(np.abs(np.asarray(got) - expected).max()) > 1e-9:
                raise RuntimeError(f"{name} answered {got}, expected {expected}")
        mlflow_reason: str | None = "--no-mlflow"
        mlflow: dict[str, Any] | None = None
        if not args.no_mlflow:
            mlflow_reason, mlflow = add_mlflow(scratch, stack, sample, expected, headers)
        if mlflow:
            systems.insert(1, mlflow["system"])
            document["mlflow_max_probability_delta"] = mlflow["delta"]
        else:
            print(f"mlflow: not measured ({mlflow_reason})")
        everyone = list({id(s): s for _, s, _, _ in systems}.values())

        print(
            f"\nthroughput: wrk -t1, keep-alive, one row per request; {args.warmup:g} s warm-up "
            f"+ {args.seconds:g} s per level; all servers up, one loaded at a time"
        )
        for level in levels:  # systems interleaved per level: drift hits all alike
            for name, server, target, script in systems:
                rows.append(measure(name, server, target, script, level, args, everyone))
        paired = [s for s in systems if s[0] in (LOGGED, NO_LOGGING)]
        if args.logging_pairs > 1:
            print(f"\nprediction logging on/off, {args.logging_pairs - 1} more alternating pairs:")
        for level in levels:
            for _ in range(args.logging_pairs - 1):
                for name, server, target, script in paired:
                    repeats.append(measure(name, server, target, script, level, args, everyone))

        settle(everyone)
        print("\ngateway overhead (sequential, http.client keep-alive):")
        over = overhead(
            int(gateway.rsplit(":", 1)[1]),
            lane1["replicas"][0]["port"],
            body,
            headers,
            args.overhead_requests,
        )
        settle(everyone)
        print("\ntoken check on its own (in this process, the servers idle):")
        token_check = token_check_cost(url, headers["Authorization"])
        settle(everyone)
        print("\ncold start (min_replicas 0, scale_to_zero_after_seconds 1):")
        cold = cold_starts(api, gateway, body, headers, args.cold_starts)
        settle(everyone)
        print("\nload step (min 1, max 2, target_in_flight 2, window 2 s):")
        step = scale_up(api, gateway, plain, headers, args.scale_limit)

        if args.profile:
            top = max(levels)
            print(f"\nprofiling (py-spy, {args.seconds:g} s at c={top} on lr1):")
            replica_pid = actual(gateway, "lr1", headers)["replicas"][0]["pid"]  # type: ignore[index]
            profiles = {}
            target, seconds = f"{gateway}/serve/lr1/predict", max(2.0, args.seconds)
            for who, pid in (("gateway", gw_server.pid), ("replica", replica_pid)):
                out = PROFILES / f"serving-{who}.pyspy.txt"
                out.parent.mkdir(parents=True, exist_ok=True)
                settle(everyone)
                profiles[who] = profile(
                    pid, seconds, out, lambda: wrk(target, plain, top, seconds - 1)
                )
                print(f"  {who} (pid {pid}), share of on-CPU samples; raw: {out.relative_to(ROOT)}")
                print_profile(profiles[who])
            document["profiles"] = profiles

    checks = [*verdicts(rows, over, cold, step, mlflow_reason, repeats), check_verdict(token_check)]
    total = time.perf_counter() - began
    print(f"\n{markdown(rows, checks)}\n")
    if mlflow_reason:
        print(f"mlflow: not measured ({mlflow_reason})")
    print(
        f"{CPUS} cores are shared by wrk, this script and the servers: 'server cores' is the "
        "server's process tree (the gateway's holds its replicas; its own process in "
        "brackets), 'other cores' is work on the machine that is none of these (it skews "
        "the figures)."
    )
    contended = [r for r in rows if r["other_cores"] > CONTENDED_CORES]
    if contended:
        print(
            f"WARNING: in {len(contended)} of {len(rows)} rows other work on this machine took "
            f"more than {CONTENDED_CORES:g} cores (up to "
            f"{max(r['other_cores'] for r in contended):.2f}): rerun on a quiet machine"
        )
    print(f"total {total:.0f} s")
    document |= {
        "args": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if k not in ("serve_bare", "port")
        },
        "code": code,
        "cpus": os.cpu_count(),
        "load_average_before": load,
        "model": f"LogisticRegression(max_iter={MAX_ITER}), {len(FEATURES)} float features, "
        f"{ROWS} seeded rows (seed {SEED})",
        "load_generator": "wrk -t1 (keep-alive), one row per request",
        "mlflow": {
            "measured": mlflow is not None,
            "reason": mlflow_reason,
            "versions": mlflow and mlflow["versions"],
        },
        "throughput": rows,
        "logging_pairs": repeats,
        "overhead": over,
        "token_check": token_check,
        "cold_start": cold,
        "scale_up": step,
        "checks": checks,
        "total_seconds": round(total),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; every process this benchmark started is stopped")
