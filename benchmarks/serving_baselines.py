"""The serving benchmark's baselines: a bare uvicorn app calling `predict_proba` in process
(the limit), and `mlflow models serve` from a bench-only virtualenv."""

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import skops.io as sio
from common import expect
from serving_measure import (
    FEATURES,
    MAX_ITER,
    TARGET,
    Server,
    free_port,
    wait_http,
    wrk_script,
)

ROOT = Path(__file__).resolve().parents[1]
SERVING_SCRIPT = Path(__file__).with_name("serving.py")  # its --serve-bare runs the bare app
MLFLOW_VENV = ROOT / ".bench" / "mlflow-venv"


# Resolved together by pip on this machine (Python 3.11); the venv is rebuilt if this changes.
MLFLOW_REQUIREMENTS = ("mlflow==3.17.2", "scikit-learn==1.9.1")


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
    args = [sys.executable, str(SERVING_SCRIPT), "--serve-bare", str(model), "--port", str(port)]
    bare = Server("bare uvicorn", args, dict(os.environ), scratch / "bare.log")
    stack.callback(bare.stop)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", bare)
    return url, bare


def add_mlflow(
    scratch: Path,
    stack: ExitStack,
    sample: dict[str, float],
    expected: np.ndarray,
    headers: dict[str, str],
) -> tuple[str | None, dict[str, Any] | None]:
    """(None, its system and answer check) or (why not, None): a failure here only takes
    mlflow out of the comparison. `headers` are the gateway's, bearer token included: mlflow
    ignores it, and gets the same header bytes as every other system."""
    try:
        url, server, versions = start_mlflow(scratch, scratch / "train.csv", stack)
        body = json.dumps({"dataframe_records": [sample]})  # its name for the same rows
        answer = expect(httpx.post(f"{url}/invocations", content=body, headers=headers))
    except (RuntimeError, OSError, subprocess.SubprocessError, httpx.HTTPError) as exc:
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()] or [repr(exc)]
        return " ... ".join(dict.fromkeys([lines[0], lines[-1]]))[:400], None
    script = scratch / "wrk" / "mlflow.lua"
    script.write_text(wrk_script(body, headers))
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
