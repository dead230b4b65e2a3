"""Explain benchmark: per-row latency of `POST .../explain` and rows/s of the global importance
job, each beside `shap` called directly in this process on the same model and rows.

A scratch Postgres database (migrated) and `flywheel api` (1 uvicorn worker) are started, used
and torn down. Two versions are registered through the API: a 100-tree random forest and a
logistic regression, both on 20 numeric features. Registration and importance jobs run in
this process (the same job functions a worker runs), so no broker is needed.
"""

import argparse
import io
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import shap
from common import expect
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from app.all_jobs import load_jobs
from app.auth.service import create_token
from app.core.artifacts import ArtifactStore
from app.core.config import Settings
from app.core.db import create_db_engine, create_session_factory, unit_of_work
from app.core.jobs import JobContext, run_job
from app.core.migrate import upgrade
from app.core.security import Role
from app.ml.model_files import save_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `tests` is not installed; its helpers are imported from here
warnings.filterwarnings("ignore")

from tests.dbutil import scratch_postgres  # noqa: E402
from tests.e2e import services  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "explain.json"
LOCAL_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
FEATURES = [f"x{i:02d}" for i in range(20)]
TRAIN_ROWS, TREES, BACKGROUND_ROWS = 2_000, 100, 100
OVERHEAD_TARGET = 0.20


def training_frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(TRAIN_ROWS, len(FEATURES)))
    weights = np.linspace(2.0, 0.0, len(FEATURES))
    logit = data @ weights + 0.5 * data[:, 0] * data[:, 1]
    frame = pd.DataFrame(data.round(4), columns=FEATURES)
    frame["label"] = (logit + rng.normal(0, 1, TRAIN_ROWS) > 0).astype(int)
    return frame


@contextmanager
def local_stack() -> Iterator[tuple[str, str, JobContext]]:
    """(API URL, admin token, a job context on the same database and artifact store)."""
    with ExitStack() as stack:
        db_url = stack.enter_context(scratch_postgres(LOCAL_SERVER, prefix="flywheel_bench"))
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flywheel-bench-")))
        upgrade(db_url)
        engine = create_db_engine(db_url)
        stack.callback(engine.dispose)
        factory = create_session_factory(engine)
        with unit_of_work(factory) as session:
            _, token = create_token(session, name="benchmark", role=Role.admin)
        env = services.service_env(db_url, "memory://", scratch / "home")
        api, url = services.start_api(env | {"FLYWHEEL_API_WORKERS": "1"}, scratch)
        stack.callback(api.stop)
        settings = Settings(
            database_url=db_url,
            home=scratch / "home",
            artifact_root=scratch / "home" / "artifacts",
            secret_key="e2e-secret-key",
        )
        load_jobs()
        ctx = JobContext(settings, ArtifactStore(settings.resolved_artifact_root), factory)
        print(f"database {db_url.rsplit('/', 1)[1]}; API at {url}")
        yield url, token, ctx


def register(
    http: httpx.Client, ctx: JobContext, name: str, model: Any, dataset_id: int, tmp: Path
) -> int:
    """Through the API as CI would; the finalize job runs here instead of on a worker."""
    path = tmp / f"{name}.skops"
    save_model(model, path)
    experiment = expect(http.post("/api/v1/experiments", json={"name": f"bench-{name}"}), 201)
    run = expect(http.post("/api/v1/runs", json={"experiment_id": experiment["id"]}), 201)
    put = http.put(f"/api/v1/runs/{run['id']}/artifacts/model.skops", content=path.read_bytes())
    expect(put)
    expect(http.post("/api/v1/models", json={"name": name}), 201)
    body = {
        "run_id": run["id"],
        "artifact_path": "model.skops",
        "dataset_version_id": dataset_id,
        "target": "label",
    }
    version = expect(http.post(f"/api/v1/models/{name}/versions", json=body), 202)
    run_job(ctx, "registry.finalize_version", {"version_id": version["id"]})
    ready = expect(http.get(f"/api/v1/models/{name}/versions/{version['version']}"))
    if ready["status"] != "ready":
        raise RuntimeError(f"{name} did not become ready: {ready['status_message']}")
    return int(version["version"])


def timed(call: Callable[[], Any], repeats: int) -> list[float]:
    millis = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        millis.append((time.perf_counter() - start) * 1000)
    return millis


def latency(
    http: httpx.Client, name: str, direct: Callable[[np.ndarray], Any], rows: pd.DataFrame, n: int
) -> dict[str, Any]:
    """Median ms for n rows through the endpoint and directly, same rows, alternating runs."""
    batch = rows.head(n)
    body = {"dataframe_split": {"columns": FEATURES, "data": batch.to_numpy().tolist()}}
    url = f"/api/v1/models/{name}/versions/1/explain"
    matrix = batch.to_numpy()
    expect(http.post(url, json=body))  # warm: the API loads the model and builds the explainer
    direct(matrix)
    repeats = 30 if n == 1 else 15
    endpoint, baseline = [], []
    for _ in range(3):  # interleaved, so background load hits both sides alike
        endpoint += timed(lambda: expect(http.post(url, json=body)), repeats // 3)
        baseline += timed(lambda: direct(matrix), repeats // 3)
    api_ms, shap_ms = float(np.median(endpoint)), float(np.median(baseline))
    return {
        "model": name,
        "rows": n,
        "endpoint_ms": round(api_ms, 2),
        "direct_shap_ms": round(shap_ms, 2),
        "endpoint_ms_per_row": round(api_ms / n, 3),
        "direct_ms_per_row": round(shap_ms / n, 3),
        "overhead": round(api_ms / shap_ms - 1, 3),
        "overhead_ms": round(api_ms - shap_ms, 2),
    }


def importance(
    http: httpx.Client,
    ctx: JobContext,
    name: str,
    direct: Callable[[np.ndarray], Any],
    frame: pd.DataFrame,
    rows: int,
) -> dict[str, Any]:
    """Job rows/s (wall time of the job function, a cold and a warm run) vs direct shap."""
    base = f"/api/v1/models/{name}/versions/1/importance"
    walls = []
    for refresh in (False, True):
        queued = expect(http.post(base, json={"sample_rows": rows, "refresh": refresh}), 202)
        start = time.perf_counter()
        run_job(ctx, "explain.importance", {"importance_id": queued["id"]})
        walls.append(time.perf_counter() - start)
    result = expect(http.get(base))
    if result["status"] != "ready":
        raise RuntimeError(f"importance of {name} failed: {result['status_message']}")
    sample = frame.sample(n=rows, random_state=0)[FEATURES].to_numpy()
    start = time.perf_counter()
    values = direct(sample)
    np.abs(np.asarray(values)).mean(axis=0)
    shap_s = time.perf_counter() - start
    size = result["sample_size"]
    return {
        "model": name,
        "rows": size,
        "job_rows_per_s_cold": round(size / walls[0], 1),
        "job_rows_per_s_warm": round(size / walls[1], 1),
        "direct_rows_per_s": round(size / shap_s, 1),
        "ratio_warm": round((size / walls[1]) / (size / shap_s), 3),
    }


def markdown(latencies: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> str:
    lines = [
        "| measurement | Flywheel | direct shap (same run) | overhead | target |",
        "|---" * 5 + "|",
    ]
    for r in latencies:
        target = ""
        if r["rows"] == 100:
            met = r["overhead"] <= OVERHEAD_TARGET
            target = f"≤ {OVERHEAD_TARGET:.0%} ({'met' if met else 'missed'})"
        lines.append(
            f"| /explain {r['model']}, {r['rows']} row(s): ms per row | "
            f"{r['endpoint_ms_per_row']:,} | {r['direct_ms_per_row']:,} | "
            f"{r['overhead']:+.1%} ({r['overhead_ms']:+.1f} ms) | {target} |"
        )
    for r in jobs:
        lines.append(
            f"| importance job {r['model']}, {r['rows']} rows: rows/s (warm; cold) | "
            f"{r['job_rows_per_s_warm']:,} ({r['job_rows_per_s_cold']:,}) | "
            f"{r['direct_rows_per_s']:,} | x{r['ratio_warm']} of direct | |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--importance-rows", type=int, default=1000)
    return parser.parse_args()


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    args, began = parse_args(), time.perf_counter()
    load = [round(x, 2) for x in os.getloadavg()]
    print(f"load average before: {load} on {os.cpu_count()} CPUs (other work skews timings)")
    frame = training_frame()
    forest = RandomForestClassifier(TREES, random_state=0, n_jobs=1)
    forest.fit(frame[FEATURES], frame["label"])
    linear = LogisticRegression(max_iter=1000).fit(frame[FEATURES], frame["label"])
    background = frame.sample(n=BACKGROUND_ROWS, random_state=0)[FEATURES].to_numpy()
    tree_explainer = shap.TreeExplainer(forest)
    linear_explainer = shap.LinearExplainer(linear, shap.maskers.Independent(background))
    direct = {
        "forest": lambda x: tree_explainer.shap_values(x, check_additivity=False),
        "logistic": lambda x: linear_explainer.shap_values(x),
    }
    rows = training_frame(seed=1)[FEATURES]
    with ExitStack() as stack:
        url, token, ctx = stack.enter_context(local_stack())
        auth = {"Authorization": f"Bearer {token}"}
        http = stack.enter_context(httpx.Client(base_url=url, headers=auth, timeout=300))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        expect(http.post("/api/v1/datasets", json={"name": "bench"}), 201)
        csv = io.StringIO()
        frame.to_csv(csv, index=False)
        files = {"file": ("train.csv", csv.getvalue().encode())}
        dataset = expect(http.post("/api/v1/datasets/bench/versions", files=files), 201)
        for name, model in (("forest", forest), ("logistic", linear)):
            register(http, ctx, name, model, dataset["id"], tmp)
        latencies = []
        for name in direct:
            for n in (1, 100):
                latencies.append(r := latency(http, name, direct[name], rows, n))
                print(
                    f"  {name:8} {n:3} rows: endpoint {r['endpoint_ms']:8.2f} ms, direct shap "
                    f"{r['direct_shap_ms']:8.2f} ms, overhead {r['overhead']:+.1%}"
                )
        jobs = []
        for name in direct:
            jobs.append(r := importance(http, ctx, name, direct[name], frame, args.importance_rows))
            print(
                f"  importance {name}: job {r['job_rows_per_s_warm']:,} rows/s warm "
                f"({r['job_rows_per_s_cold']:,} cold), direct {r['direct_rows_per_s']:,} rows/s"
            )
    print(f"\n{markdown(latencies, jobs)}\n\ntotal {time.perf_counter() - began:.0f} s")
    document = {
        "measured_at": datetime.now(UTC).isoformat(),
        "load_average_before": load,
        "trees": TREES,
        "features": len(FEATURES),
        "training_rows": TRAIN_ROWS,
        "overhead_target": OVERHEAD_TARGET,
        "latency": latencies,
        "importance": jobs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
