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
`{"dataframe_records": [...]}` to mlflow. Needs wrk (`apt-get install wrk`); --profile needs
py-spy (`.venv/bin/pip install py-spy`). The mlflow venv by hand, if pip fails from here:
`python3.11 -m venv .bench/mlflow-venv && .bench/mlflow-venv/bin/pip install mlflow==3.17.2
scikit-learn==1.9.1`, then write those two lines to .bench/mlflow-venv/bench-requirements.txt.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import skops.io as sio
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

from tests.conftest import InlineJobs  # noqa: E402
from tests.registry.helpers import Registry  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
PROFILES = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent
MLFLOW_VENV = ROOT / ".bench" / "mlflow-venv"
# Resolved together by pip on this machine (Python 3.11); the venv is rebuilt if this changes.
MLFLOW_REQUIREMENTS = ("mlflow==3.17.2", "scikit-learn==1.9.1")
FEATURES = [f"f{i}" for i in range(20)]
TARGET, MODEL, SEED, ROWS, MAX_ITER = "label", "lr", 7, 5000, 1000
LEVELS = (1, 8, 32)
# Targets, all at concurrency 32 where a concurrency applies.
VS_BARE_TARGET, VS_MLFLOW_TARGET, P99_TARGET_MS = 0.5, 1.5, 30.0
OVERHEAD_TARGET_MS, COLD_START_TARGET_S, SCALE_UP_TARGET_S = 1.0, 2.0, 15.0
LOGGING_COST_TARGET = 0.10  # prediction logging may cost at most this share of throughput
NO_LOGGING = "gateway, 1 replica, no logging"
STEP_BASELINE_S = 5.0  # concurrency 1 before the step to 32
OVERHEAD_WARMUP = 100  # requests not counted in the overhead measurement
JSON = {"Content-Type": "application/json"}
System = tuple[str, "Server", str, Path]  # name, process tree, URL, wrk script
CONTENDED_CORES = 0.25  # other work above this during a row makes that row suspect
IDLE_CORES = 0.05  # a server tree under this is idle (the gateway reconciles every 2 s)
PROFILE_LINES = 12
NATIVE_LOOP = "asyncio (uvloop, httptools: native)"  # no Python frame below the loop's
TICK, CPUS = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1

MLFLOW_TRAIN = """
import sys
import pandas as pd
import mlflow.sklearn
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression

csv, out, target, max_iter = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
frame = pd.read_csv(csv)
x, y = frame.drop(columns=[target]), frame[target]
model = LogisticRegression(max_iter=max_iter).fit(x, y)
signature = infer_signature(x, model.predict_proba(x))
mlflow.sklearn.save_model(model, out, signature=signature, pyfunc_predict_fn="predict_proba")
"""

WRK_SCRIPT = """wrk.method = "POST"
wrk.body = [==[%s]==]
wrk.headers["Content-Type"] = "application/json"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, '
    .. '"write": %%d, "status": %%d, "timeout": %%d, "p50_us": %%d, "p90_us": %%d, '
    .. '"p99_us": %%d, "max_us": %%d, "mean_us": %%.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


# -- processes and CPU accounting --------------------------------------------------------------


class Server:
    """A process in a session of its own: its whole tree is stopped (and its CPU counted)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self.handle = log.open("w")
        self.popen = subprocess.Popen(
            args, env=env, stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self, tail: int = 3000) -> str:
        self.handle.flush()
        return self.log.read_text(errors="replace")[-tail:]

    def stop(self) -> None:
        """SIGTERM to the leader (the gateway stops its replicas itself), then SIGKILL to all
        that is left of the session."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.handle.close()


def session_ticks(session: int) -> dict[int, int]:
    """utime + stime (clock ticks) of every live process in a session."""
    ticks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session:
            ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    return ticks


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)


class CpuWindow:
    """Cores used meanwhile by a server's process tree (and its leader alone), by this script
    and by the whole machine; what is left over is other work on the machine."""

    def __init__(self, server: Server) -> None:
        self.server, self.ticks, self.machine = server, session_ticks(server.pid), machine_ticks()
        self.own, self.began = time.process_time(), time.perf_counter()

    def close(self, client_cores: float) -> dict[str, float]:
        after, (busy, total) = session_ticks(self.server.pid), machine_ticks()
        seconds = time.perf_counter() - self.began
        used = {pid: t - self.ticks.get(pid, 0) for pid, t in after.items()}
        server = sum(used.values()) / TICK / seconds
        script = (time.process_time() - self.own) / seconds
        busy_cores = (busy - self.machine[0]) / max(1, total - self.machine[1]) * CPUS
        return {
            "server_cores": round(server, 2),
            "server_leader_cores": round(used.get(self.server.pid, 0) / TICK / seconds, 2),
            "machine_busy_cores": round(busy_cores, 2),
            "other_cores": round(max(0.0, busy_cores - server - client_cores - script), 2),
        }


def settle(servers: list[Server], limit: float = 30) -> None:
    """Until every server is idle: requests a stopped wrk left in flight still run, and would
    land in the next measurement (of the same system or another)."""

    def ticks() -> int:
        return sum(sum(session_ticks(s.pid).values()) for s in servers)

    deadline, before = time.monotonic() + limit, ticks()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        if ((after := ticks()) - before) / TICK < IDLE_CORES * 0.25:
            return
        before = after


def wait_http(url: str, server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.popen.poll() is not None:
            break
        with suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer {url}; its log:\n{server.output()}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def expect(response: httpx.Response, status: int = 200) -> Any:
    if response.status_code != status:
        req = response.request
        raise RuntimeError(f"{req.method} {req.url} -> {response.status_code}: {response.text}")
    return response.json()


def deploy(
    api: TestClient, name: str, autoscaling: dict[str, Any], log_sample_rate: float = 1.0
) -> None:
    body = {
        "name": name,
        "variants": [{"name": "main", "model": f"{MODEL}/1"}],
        "log_sample_rate": log_sample_rate,
    }
    expect(api.post("/api/v1/deployments", json=body | {"autoscaling": autoscaling}), 201)


def actual(gateway: str, name: str) -> dict[str, Any] | None:
    response = httpx.get(f"{gateway}/gateway/deployments/{name}", timeout=30)
    return response.json()["variants"][0] if response.status_code == 200 else None


def wait_replicas(gateway: str, name: str, count: int, timeout: float = 120) -> dict[str, Any]:
    """Until GET /gateway/deployments/{name} shows `count` replicas, all ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lane = actual(gateway, name)
        if lane and len(lane["replicas"]) == count and all(r["ready"] for r in lane["replicas"]):
            return lane
        time.sleep(0.1)
    raise RuntimeError(f"{name}: {count} ready replicas did not show up: {lane}")


# -- the systems under test ---------------------------------------------------------------------


def serve_bare(model_path: Path, port: int) -> None:
    """The limit: parse the same body, `predict_proba` in process, answer JSON."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    # fitted on a frame, fed an array: sklearn would warn on every call
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    model = sio.load(model_path, trusted=sio.get_untrusted_types(file=model_path))
    classes = model.classes_

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ready"})

    async def predict(request: Request) -> JSONResponse:
        rows = (await request.json())["rows"]
        x = np.array([[row[f] for f in FEATURES] for row in rows], dtype=float)
        probabilities = model.predict_proba(x)
        predictions = classes[probabilities.argmax(axis=1)].tolist()
        return JSONResponse({"predictions": predictions, "probabilities": probabilities.tolist()})

    routes = [Route("/health", health), Route("/predict", predict, methods=["POST"])]
    uvicorn.run(
        Starlette(routes=routes), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


def mlflow_python() -> Path:
    """The bench-only venv with mlflow, built once (pip, a few minutes); raises with the
    reason if pip cannot install it."""
    python, marker = MLFLOW_VENV / "bin" / "python", MLFLOW_VENV / "bench-requirements.txt"
    wanted = "\n".join(MLFLOW_REQUIREMENTS) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    shutil.rmtree(MLFLOW_VENV, ignore_errors=True)
    MLFLOW_VENV.parent.mkdir(parents=True, exist_ok=True)
    log = MLFLOW_VENV.parent / "mlflow-install.log"
    print(f"creating {MLFLOW_VENV.relative_to(ROOT)}: pip install {' '.join(MLFLOW_REQUIREMENTS)}")
    print(f"  (one-off, a few minutes; output in {log.relative_to(ROOT)})")
    began = time.perf_counter()
    with log.open("w") as handle:
        for command in (
            [sys.executable, "-m", "venv", str(MLFLOW_VENV)],
            [str(python), "-m", "pip", "install", "--quiet", *MLFLOW_REQUIREMENTS],
        ):
            try:
                done = subprocess.run(
                    command, stdout=handle, stderr=subprocess.STDOUT, timeout=1800
                )
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{command[2]} timed out after 30 min; see {log}") from None
            if done.returncode != 0:
                lines = [ln for ln in log.read_text().splitlines() if "is ignored" not in ln]
                errors = [ln for ln in lines if "ERROR" in ln] or lines[-1:]
                raise RuntimeError(f"`{' '.join(command[2:4])}` failed: {' | '.join(errors[:3])}")
    marker.write_text(wanted)
    print(f"  done in {time.perf_counter() - began:.0f} s")
    return python


def start_bare(model: Path, scratch: Path, stack: ExitStack) -> tuple[str, Server]:
    port = free_port()
    args = [sys.executable, __file__, "--serve-bare", str(model), "--port", str(port)]
    bare = Server("bare uvicorn", args, dict(os.environ), scratch / "bare.log")
    stack.callback(bare.stop)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", bare)
    return url, bare


def add_mlflow(
    scratch: Path, stack: ExitStack, sample: dict[str, float], expected: np.ndarray
) -> tuple[str | None, dict[str, Any] | None]:
    """(None, its system and answer check) or (why not, None): a failure here only takes
    mlflow out of the comparison."""
    try:
        url, server, versions = start_mlflow(scratch, scratch / "train.csv", stack)
        body = json.dumps({"dataframe_records": [sample]})  # its name for the same rows
        answer = expect(httpx.post(f"{url}/invocations", content=body, headers=JSON))
    except (RuntimeError, OSError, subprocess.SubprocessError, httpx.HTTPError) as exc:
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()] or [repr(exc)]
        return " ... ".join(dict.fromkeys([lines[0], lines[-1]]))[:400], None
    script = scratch / "wrk" / "mlflow.lua"
    script.write_text(WRK_SCRIPT % body)
    delta = float(np.abs(np.asarray(answer["predictions"][0]) - expected).max())
    print(f"mlflow models serve at {url} ({versions}); same row: max |dp| {delta:.1e}")
    system = ("mlflow models serve", server, f"{url}/invocations", script)
    return None, {"system": system, "delta": delta, "versions": versions}


def start_mlflow(scratch: Path, csv: Path, stack: ExitStack) -> tuple[str, Server, str]:
    """(URL, server, versions) of `mlflow models serve` on a model trained in its venv."""
    python = mlflow_python()
    model_dir = scratch / "mlflow-model"
    train = [str(python), "-c", MLFLOW_TRAIN, str(csv), str(model_dir), TARGET, str(MAX_ITER)]
    done = subprocess.run(train, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"training in the mlflow venv failed: {done.stderr[-1500:]}")
    versions = subprocess.run(
        [
            str(python),
            "-c",
            "import mlflow, sklearn, pandas; print(mlflow.__version__, "
            "sklearn.__version__, pandas.__version__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"  # it execs `uvicorn`
    # `python -m mlflow`, not bin/mlflow: a moved venv keeps working (scripts pin a path)
    args = [str(python), "-m", "mlflow", "models", "serve", "-m", str(model_dir)]
    args += ["-h", "127.0.0.1", "-p", str(port), "--env-manager", "local", "-w", "1"]
    server = Server("mlflow", args, env, scratch / "mlflow.log")
    stack.callback(server.stop)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/ping", server)
    return url, server, f"mlflow {versions[0]}, scikit-learn {versions[1]}, pandas {versions[2]}"


# -- load ----------------------------------------------------------------------------------------


def wrk(url: str, script: Path, connections: int, seconds: float) -> dict[str, Any]:
    """One wrk run (1 thread, keep-alive); its own CPU from wait4's rusage."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s"]
    process = subprocess.Popen(
        [*command, "-s", str(script), url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if process.returncode is None:
            process.kill()
            process.wait()
    found = [ln for ln in output.splitlines() if ln.startswith("WRKJSON ")]
    if process.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output}")
    raw = json.loads(found[0].removeprefix("WRKJSON "))
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    duration = raw["duration_us"] / 1e6
    return {
        "rps": round(raw["requests"] / duration, 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "requests": raw["requests"],
        "errors": errors,
        "error_kinds": {k: raw[k] for k in ("connect", "read", "write", "status", "timeout")},
        "client_cores": round((usage.ru_utime + usage.ru_stime) / duration, 2),
    }


def measure(
    system: str,
    server: Server,
    url: str,
    script: Path,
    level: int,
    args: argparse.Namespace,
    everyone: list[Server],
) -> dict[str, Any]:
    settle(everyone)
    wrk(url, script, level, args.warmup)
    settle(everyone)
    window = CpuWindow(server)
    found = wrk(url, script, level, args.seconds)
    row = {"system": system, "concurrency": level, **found}
    row |= window.close(found["client_cores"])
    print(
        f"  {system:20} c={level:<3} {row['rps']:7.0f} req/s  p50 {row['p50_ms']:7.2f} ms  "
        f"p99 {row['p99_ms']:7.2f} ms  errors {row['errors']:<3} cores: server "
        f"{server_cores(row)}, wrk {row['client_cores']:.2f}, other {row['other_cores']:.2f}"
    )
    return row


def server_cores(row: dict[str, Any]) -> str:
    """The gateway's tree holds its replicas: its own process is shown apart."""
    own = f" (gateway {row['server_leader_cores']:.2f})" if "gateway" in row["system"] else ""
    return f"{row['server_cores']:.2f}{own}"


# -- gateway specifics -------------------------------------------------------------------------


class Poster:
    """Keep-alive POSTs of one body on one connection (http.client: a thin client)."""

    def __init__(self, port: int, path: str, body: bytes) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.path, self.body = path, body

    def post(self) -> tuple[float, float]:
        """(total ms seen here, the replica's model_latency_ms from the body)."""
        began = time.perf_counter()
        self.connection.request("POST", self.path, body=self.body, headers=JSON)
        response = self.connection.getresponse()
        payload = response.read()
        total = (time.perf_counter() - began) * 1000
        if response.status != 200:
            raise RuntimeError(f"POST {self.path} -> {response.status}: {payload[:500]!r}")
        return total, float(json.loads(payload)["model_latency_ms"])


def overhead(gateway_port: int, replica_port: int, body: bytes, count: int) -> dict[str, float]:
    """Gateway total minus the replica's model_latency_ms. The same request straight to the
    replica, alternated with it (so that both see the same machine), tells the HTTP hop that
    any separate process costs apart from what the gateway adds."""
    via = Poster(gateway_port, "/serve/lr1/predict", body)
    direct = Poster(replica_port, "/predict", body)
    samples: dict[str, list[tuple[float, float]]] = {"via": [], "direct": []}
    try:
        for i in range(count + OVERHEAD_WARMUP):
            pair = via.post(), direct.post()
            if i >= OVERHEAD_WARMUP:
                samples["via"].append(pair[0])
                samples["direct"].append(pair[1])
    finally:
        via.connection.close()
        direct.connection.close()

    def p50(values: list[float]) -> float:
        return round(float(np.percentile(values, 50)), 3)

    found = {
        "gateway_total_p50_ms": p50([t for t, _ in samples["via"]]),
        "model_latency_p50_ms": p50([m for _, m in samples["via"]]),
        "overhead_p50_ms": p50([t - m for t, m in samples["via"]]),
        "replica_direct_total_p50_ms": p50([t for t, _ in samples["direct"]]),
        "replica_direct_overhead_p50_ms": p50([t - m for t, m in samples["direct"]]),
    }
    found["added_by_gateway_p50_ms"] = round(
        found["overhead_p50_ms"] - found["replica_direct_overhead_p50_ms"], 3
    )
    print(
        f"  c=1, {count} requests each: through the gateway total p50 "
        f"{found['gateway_total_p50_ms']:.2f} ms, model_latency_ms p50 "
        f"{found['model_latency_p50_ms']:.2f} -> overhead p50 {found['overhead_p50_ms']:.2f} ms"
        f"\n  straight to the replica: total p50 {found['replica_direct_total_p50_ms']:.2f} ms, "
        f"overhead p50 {found['replica_direct_overhead_p50_ms']:.2f} ms (HTTP hop, JSON); "
        f"so the gateway adds {found['added_by_gateway_p50_ms']:.2f} ms"
    )
    return found


def cold_starts(api: TestClient, gateway: str, body: bytes, cycles: int) -> dict[str, Any]:
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
    while actual(gateway, "cold") is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway never picked up deployment cold")
        time.sleep(0.1)
    samples = []
    with httpx.Client(base_url=gateway, timeout=120) as http:
        for cycle in range(cycles + 1):  # cycle 0: never started yet; not counted
            lane = actual(gateway, "cold")
            assert lane is not None and not lane["replicas"], lane
            began = time.perf_counter()
            answer = http.post("/serve/cold/predict", content=body, headers=JSON)
            seconds = time.perf_counter() - began
            if answer.status_code != 200:
                raise RuntimeError(f"cold request -> {answer.status_code}: {answer.text}")
            lane = actual(gateway, "cold")
            assert lane is not None
            spawn = lane["cold_starts_seconds"][-1]
            kind = "first start" if cycle == 0 else f"after zero #{cycle}"
            print(f"  {kind:14} request -> answer {seconds:.2f} s; spawn -> ready {spawn:.2f} s")
            if cycle:
                samples.append(
                    {"request_to_answer_s": round(seconds, 3), "spawn_to_ready_s": spawn}
                )
            deadline, zero_at = time.monotonic() + 60, time.perf_counter()
            while (lane := actual(gateway, "cold")) and lane["replicas"]:
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


def scale_up(api: TestClient, gateway: str, script: Path, limit: float) -> dict[str, Any]:
    """Concurrency 1, then 32 sustained: seconds until the second replica is listed, ready,
    and has served (polling the gateway's actual state)."""
    policy = {"min_replicas": 1, "max_replicas": 2, "target_in_flight": 2, "window_seconds": 2}
    deploy(api, "step", policy | {"scale_down_stabilization_seconds": 300})
    wait_replicas(gateway, "step", 1)
    url = f"{gateway}/serve/step/predict"
    wrk(url, script, 1, STEP_BASELINE_S)
    lane = actual(gateway, "step")
    assert lane is not None
    if len(lane["replicas"]) != 1:
        raise RuntimeError(f"scaled at concurrency 1 already: {lane['scaling_decisions']}")
    command = ["wrk", "-t1", "-c32", f"-d{limit:g}s", "--timeout", "10s", "-s", str(script), url]
    step = time.perf_counter()
    load = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    marks: dict[str, float] = {}
    try:
        while time.perf_counter() - step < limit and load.poll() is None:
            lane = actual(gateway, "step")
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


def profile(
    pid: int, seconds: float, out: Path, run: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """py-spy (sampling, non-blocking) on one process while `run` loads it; its summary."""
    spy = BIN / "py-spy"
    command = [str(spy), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200"]
    command += ["--nonblocking", "-f", "raw", "-o", str(out)]
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1)
        run()
    finally:
        _, err = recorder.communicate(timeout=seconds + 30)
    if recorder.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
    return summarise_profile(out)


def summarise_profile(collapsed: Path, count: int = 40) -> dict[str, Any]:
    """Shares of on-CPU samples: self time by package of the leaf frame (native code shows
    under the Python frame that called it: the event loop's under asyncio), inclusive time
    of our own functions (app/, the entry points that every sample shares left out), and the
    top functions by inclusive and by self time."""
    frame = re.compile(r"^(.*?) \((.*?)(?::\d+)?\)$")
    inclusive, own, packages, total = Counter[str](), Counter[str](), Counter[str](), 0
    entry_points: set[str] = set()  # frames above the event loop: in every request's stack
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = [m for part in stack.split(";") if (m := frame.match(part))]
        if not frames:
            continue
        n = int(samples)
        total += n
        names = [f"{m[1]} ({m[2]})" for m in frames]
        loop = next((i for i, m in enumerate(frames) if m[2] == "asyncio/runners.py"), None)
        entry_points.update(names[: loop or 0])
        for name in set(names):
            inclusive[name] += n
        own[names[-1]] += n
        leaf = frames[-1][2]
        packages[
            "/".join(leaf.split("/")[:3]) if leaf.startswith("app/") else leaf.split("/")[0]
        ] += n

    def share(n: int) -> float:
        return round(n / max(1, total), 3)

    ours = [
        {"function": name, "inclusive": share(n)}
        for name, n in inclusive.most_common()
        if "(app/" in name and name not in entry_points
    ]
    return {
        "samples": total,
        "self_by_package": [{"package": k, "self": share(n)} for k, n in packages.most_common()],
        "app_inclusive": ours[:count],
        "top_inclusive": [
            {"function": k, "inclusive": share(n)} for k, n in inclusive.most_common(count)
        ],
        "top_self": [{"function": k, "self": share(n)} for k, n in own.most_common(count)],
    }


def print_profile(summary: dict[str, Any]) -> None:
    packages = ", ".join(
        f"{NATIVE_LOOP if p['package'] == 'asyncio' else p['package']} {p['self']:.0%}"
        for p in summary["self_by_package"][:PROFILE_LINES]
    )
    print(f"    self time by package: {packages}")
    print("    our functions, inclusive:")
    for entry in summary["app_inclusive"][:PROFILE_LINES]:
        print(f"      {entry['inclusive']:6.1%}  {entry['function']}")


# -- report --------------------------------------------------------------------------------------


def verdicts(
    rows: list[dict[str, Any]],
    over: dict[str, float],
    cold: dict[str, Any],
    step: dict[str, Any],
    mlflow_reason: str | None,
) -> list[dict[str, Any]]:
    at = {(r["system"], r["concurrency"]): r for r in rows}
    top = max(r["concurrency"] for r in rows)
    bare, mlflow = at[("bare uvicorn", top)], at.get(("mlflow models serve", top))
    found: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: str, met: bool | None, note: str = "") -> None:
        found.append({"measurement": name, "value": value, "target": target, "met": met})
        if note:
            found[-1]["note"] = note

    for label in ("gateway, 1 replica", "gateway, 2 replicas"):
        gw = at[(label, top)]
        ratio = round(gw["rps"] / bare["rps"], 2)
        add(
            f"{label}: req/s vs bare, c={top}",
            ratio,
            f">= {VS_BARE_TARGET}x",
            ratio >= VS_BARE_TARGET,
        )
        if mlflow is None:
            add(
                f"{label}: req/s vs mlflow, c={top}",
                None,
                f">= {VS_MLFLOW_TARGET}x",
                None,
                f"mlflow: not measured ({mlflow_reason})",
            )
        else:
            ratio = round(gw["rps"] / mlflow["rps"], 2)
            add(
                f"{label}: req/s vs mlflow, c={top}",
                ratio,
                f">= {VS_MLFLOW_TARGET}x",
                ratio >= VS_MLFLOW_TARGET,
            )
        add(
            f"{label}: p99 ms, c={top}",
            gw["p99_ms"],
            f"<= {P99_TARGET_MS:g} ms",
            gw["p99_ms"] <= P99_TARGET_MS,
        )
    for level in sorted({r["concurrency"] for r in rows}):
        logged, quiet = at.get(("gateway, 1 replica", level)), at.get((NO_LOGGING, level))
        if logged and quiet and quiet["rps"]:
            cost = round(1 - logged["rps"] / quiet["rps"], 3)
            add(
                f"prediction logging: throughput lost, c={level}",
                cost,
                f"<= {LOGGING_COST_TARGET:.0%}",
                cost <= LOGGING_COST_TARGET,
            )
    value = over["overhead_p50_ms"]
    add(
        "overhead p50 ms (gateway total - model_latency_ms)",
        value,
        f"<= {OVERHEAD_TARGET_MS:g} ms",
        value <= OVERHEAD_TARGET_MS,
    )
    value = cold["request_to_answer_median_s"]
    add(
        "cold start s (request on zero replicas -> answer, median)",
        value,
        f"<= {COLD_START_TARGET_S:g} s",
        value <= COLD_START_TARGET_S,
    )
    serving = step.get("serving_s")
    add(
        "load step 1 -> 32 to extra replica serving, s",
        serving,
        f"<= {SCALE_UP_TARGET_S:g} s",
        serving is not None and serving <= SCALE_UP_TARGET_S,
    )
    return found


def markdown(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    lines = [
        "| system | c | req/s | p50 ms | p99 ms | errors | server cores | wrk cores "
        "| other cores |",
        "|---" * 9 + "|",
    ]
    for r in sorted(rows, key=lambda r: (r["system"], r["concurrency"])):
        lines.append(
            f"| {r['system']} | {r['concurrency']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {r['errors']} | {server_cores(r)} "
            f"| {r['client_cores']:.2f} | {r['other_cores']:.2f} |"
        )
    lines += ["", "| measurement | value | target | verdict |", "|---" * 4 + "|"]
    for c in checks:
        verdict = {True: "PASS", False: "MISS", None: "n/a"}[c["met"]]
        value = "-" if c["value"] is None else f"{c['value']:g}"
        lines.append(f"| {c['measurement']} | {value} | {c['target']} | {verdict} |")
    return "\n".join(lines)


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

        gateway, gw_server = stack.enter_context(gateway_process(scratch, url))
        deploy(api, "lr1", {"min_replicas": 1, "max_replicas": 1})
        deploy(api, "lr2", {"min_replicas": 2, "max_replicas": 2})
        # the same as lr1 without prediction logging: what logging costs on the request path
        deploy(api, "lr1q", {"min_replicas": 1, "max_replicas": 1}, log_sample_rate=0.0)
        lane1 = wait_replicas(gateway, "lr1", 1)
        wait_replicas(gateway, "lr2", 2)
        wait_replicas(gateway, "lr1q", 1)
        print(f"gateway at {gateway} (pid {gw_server.pid}); lr1: 1 replica, lr2: 2 replicas ready")

        bare_url, bare = start_bare(scratch / "model.skops", scratch, stack)
        scripts = scratch / "wrk"
        scripts.mkdir()
        plain = scripts / "rows.lua"
        plain.write_text(WRK_SCRIPT % body.decode())
        systems: list[System] = [
            ("bare uvicorn", bare, f"{bare_url}/predict", plain),
            ("gateway, 1 replica", gw_server, f"{gateway}/serve/lr1/predict", plain),
            ("gateway, 2 replicas", gw_server, f"{gateway}/serve/lr2/predict", plain),
            (NO_LOGGING, gw_server, f"{gateway}/serve/lr1q/predict", plain),
        ]
        for name, _, target, _ in systems:  # the same answer everywhere before timing anything
            got = expect(httpx.post(target, content=body, headers=JSON))["probabilities"][0]
            if float(np.abs(np.asarray(got) - expected).max()) > 1e-9:
                raise RuntimeError(f"{name} answered {got}, expected {expected}")
        mlflow_reason: str | None = "--no-mlflow"
        mlflow: dict[str, Any] | None = None
        if not args.no_mlflow:
            mlflow_reason, mlflow = add_mlflow(scratch, stack, sample, expected)
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

        settle(everyone)
        print("\ngateway overhead (sequential, http.client keep-alive):")
        over = overhead(
            int(gateway.rsplit(":", 1)[1]),
            lane1["replicas"][0]["port"],
            body,
            args.overhead_requests,
        )
        settle(everyone)
        print("\ncold start (min_replicas 0, scale_to_zero_after_seconds 1):")
        cold = cold_starts(api, gateway, body, args.cold_starts)
        settle(everyone)
        print("\nload step (min 1, max 2, target_in_flight 2, window 2 s):")
        step = scale_up(api, gateway, plain, args.scale_limit)

        if args.profile:
            top = max(levels)
            print(f"\nprofiling (py-spy, {args.seconds:g} s at c={top} on lr1):")
            replica_pid = actual(gateway, "lr1")["replicas"][0]["pid"]  # type: ignore[index]
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

    checks = verdicts(rows, over, cold, step, mlflow_reason)
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
        "args": {k: v for k, v in vars(args).items() if k not in ("serve_bare", "port")},
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
        "overhead": over,
        "cold_start": cold,
        "scale_up": step,
        "checks": checks,
        "total_seconds": round(total),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; every process this benchmark started is stopped")
