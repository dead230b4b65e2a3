"""Run one pipeline stage in a child process: `python -m app.pipelines.runner request.json`.

The worker starts this process with a timeout and a memory limit and talks to it only through
files and the exit code, so a crash, an out-of-memory kill or hostile user code cannot corrupt
the worker. Contract:

- reads the JSON request named on the command line, prints progress lines to stdout;
- writes `<workdir>/result.json` atomically (a killed run leaves none, never a partial one);
- exit 0: success; exit 2: a user error, the message in result.json {"error": ...};
  exit 1: an unexpected crash, the traceback on stderr (and the error in result.json if the
  workdir could be written).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import json
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from app.ml import evaluation, training
from app.ml.model_files import ModelFileError, load_model, save_model
from app.ml.tabular import TableFormatError, read_table

USER_ERRORS = (training.TrainingError, TableFormatError, ModelFileError)
STAGE_NAMES = {"train": "training", "evaluate": "evaluation", "python": "the python step"}
MODEL_FILE = "model.skops"
RESULT_FILE = "result.json"
M_ARENA_MAX = -8  # glibc mallopt parameter


def say(message: str) -> None:
    """One progress line; flushed, because the parent streams stdout into the task log."""
    print(message, flush=True)


def limit_memory(limit_mb: int) -> None:
    """Cap the address space at what is mapped now plus `limit_mb`.

    RLIMIT_AS counts virtual memory, and the interpreter with numpy, pandas and scikit-learn
    already maps several hundred MB (more with many cores), so a bare cap of a few hundred MB
    would fail before any user work. The budget is therefore what training may add. Reserved
    but unused address space would eat that budget, so it is avoided first: Arrow's mimalloc
    reserves 1 GB on its first allocation, and glibc reserves 64 MB for each thread's arena.
    """
    pa.set_memory_pool(pa.system_memory_pool())
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tame
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 2)
    soft = _mapped_bytes() + limit_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _mapped_bytes() -> int:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def load_function(spec: str, source_dir: str | None) -> Callable[..., Any]:
    """Import `module:function` from the user's source directory (first on sys.path)."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise training.TrainingError(f"entrypoint {spec!r} must look like 'module:function'")
    if source_dir:
        sys.path.insert(0, source_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise  # the user's module imports something missing: show the traceback
        raise training.TrainingError(
            f"module {module_name!r} was not found in the source directory"
        ) from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise training.TrainingError(f"module {module_name!r} has no function {name!r}")
    return function  # type: ignore[no-any-return]


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested hyperparameters as dotted keys with scalar values (lists become JSON text)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif value is None or isinstance(value, str | int | float | bool):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=repr)
    return flat


def _read(request: dict[str, Any]) -> Any:
    say(f"reading {request['dataset_format']} dataset")
    frame = read_table(Path(request["dataset_path"]), request["dataset_format"])
    say(f"read {len(frame)} rows, {frame.shape[1]} columns")
    return frame


def _split(request: dict[str, Any], frame: Any) -> tuple[Any, Any]:
    target = request["target"]
    training.require_target(frame, target)
    train, test = training.split(
        frame,
        target=target,
        test_size=float(request.get("test_size", 0.2)),
        seed=int(request.get("seed", 0)),
        stratify=training.is_classifier_target(frame[target]),
    )
    dropped = len(frame) - len(train) - len(test)
    if dropped:
        say(f"note: dropped {dropped} rows without a value in {target!r}")
    return train, test


def _say_metrics(label: str, metrics: dict[str, float]) -> None:
    say(f"{label}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


def _load_parent(parent: dict[str, Any]) -> Any:
    """The model a retrain continues from, loaded like the evaluate stage's champion."""
    model = load_model(Path(parent["model_path"]), digest=parent["digest"], types=parent["types"])
    say(f"continuing {type(model).__name__} {parent['digest'][:12]} with {parent['method']}")
    return model


def stage_train(request: dict[str, Any], workdir: Path) -> dict[str, Any]:
    started, seed = time.monotonic(), int(request.get("seed", 0))
    target = request["target"]
    excluded = list(request.get("exclude_columns") or [])
    frame = training.without_columns(_read(request), excluded, target=target)
    if excluded:
        say(f"leaving out {', '.join(excluded)}")
    train, test = _split(request, frame)
    say(f"split: {len(train)} training rows, {len(test)} test rows")
    hyperparameters = dict(request.get("hyperparameters") or {})
    estimator, entrypoint = request.get("estimator"), request.get("entrypoint")
    parent = request.get("continue_from")
    if not isinstance(parent, dict) and bool(estimator) == bool(entrypoint):
        raise training.TrainingError("give exactly one of an estimator or an entrypoint")
    # Continuing keeps the parent's fitted preprocessing, so estimator/entrypoint go unused.
    parent_model = _load_parent(parent) if isinstance(parent, dict) else None
    notes: list[str] = []
    continued: dict[str, Any] | None = None
    fit_started = time.monotonic()
    if isinstance(parent, dict):
        add = parent.get("add_estimators")
        model, continued = training.continue_training(
            parent_model,
            train,
            target=target,
            method=parent["method"],
            add_estimators=None if add is None else int(add),
            batch_size=int(parent.get("batch_size") or 256),
            allowed=request.get("allowed_estimators") or [],
        )
        params = {
            **flatten(hyperparameters),
            **({"estimator": estimator} if estimator else {}),
            **({"entrypoint": entrypoint} if entrypoint else {}),
            "continue_method": continued["method"],
            "parent_digest": parent["digest"],
        }
    elif estimator:
        allowed = request.get("allowed_estimators") or []
        probe = training.build_estimator(estimator, hyperparameters, allowed)
        if "random_state" in probe.get_params() and "random_state" not in hyperparameters:
            hyperparameters["random_state"] = seed  # reproducible fits
        say(f"fitting {estimator}")
        model = training.fit_builtin(
            train,
            target=target,
            estimator=estimator,
            hyperparameters=hyperparameters,
            preprocessing=request.get("preprocessing", "auto"),
            allowed=allowed,
            notes=notes,
        )
        params = {**flatten(hyperparameters), "estimator": estimator}
    else:
        function = load_function(str(entrypoint), request.get("source_dir"))
        say(f"calling entrypoint {entrypoint}")
        model = training.fit_entrypoint(train, function, hyperparameters)
        params = {**flatten(hyperparameters), "entrypoint": entrypoint}
    fit_seconds = time.monotonic() - fit_started
    for note in notes:
        say(f"note: {note}")
    say(f"fitted {type(model).__name__} in {fit_seconds:.2f}s; saving")
    try:
        info = save_model(model, workdir / MODEL_FILE)
    except Exception as exc:
        if estimator or continued or isinstance(exc, MemoryError):
            raise
        raise training.TrainingError(
            f"the model returned by the entrypoint cannot be saved with skops: {exc}"
        ) from exc
    metrics = {f"train_{k}": v for k, v in evaluation.evaluate(model, train, target).items()}
    metrics |= {f"holdout_{k}": v for k, v in evaluation.evaluate(model, test, target).items()}
    _say_metrics("metrics", metrics)
    return {
        "model_path": str(workdir / MODEL_FILE),
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "model_digest": info.digest,
        "model_size_bytes": info.size_bytes,
        "model_types": info.types,
        "params": params,
        "metrics": metrics,
        "rows": {"train": len(train), "test": len(test)},
        "split": {"test_size": float(request.get("test_size", 0.2)), "seed": seed},
        "task": evaluation.task_of(model),
        "supports": training.supports(model),
        "continued": continued,
        "notes": notes,
        "fit_duration_s": round(fit_seconds, 3),
        "duration_s": round(time.monotonic() - started, 3),
    }


def stage_evaluate(request: dict[str, Any], workdir: Path) -> dict[str, Any]:
    target = request["target"]
    model = load_model(
        Path(request["model_path"]), digest=request["model_digest"], types=request["model_types"]
    )
    frame = _read(request)
    if request.get("use_holdout", True):
        _, rows = _split(request, frame)
        say(f"evaluating on the {len(rows)} holdout rows")
    else:
        training.require_target(frame, target)
        rows = frame[frame[target].notna()]
        say(f"evaluating on all {len(rows)} labelled rows")
    # the candidate left these columns out; the champion may still take them
    excluded = [c for c in request.get("exclude_columns") or [] if c in rows.columns]
    metrics = evaluation.evaluate(model, rows.drop(columns=excluded), target)
    _say_metrics("candidate", metrics)
    result: dict[str, Any] = {"metrics": metrics, "champion_metrics": None}
    champion = request.get("champion")
    if champion:
        reference = load_model(
            Path(champion["model_path"]), digest=champion["digest"], types=champion["types"]
        )
        try:
            result["champion_metrics"] = evaluation.evaluate(reference, rows, target)
            _say_metrics("champion", result["champion_metrics"])
        except training.TrainingError as exc:  # e.g. the champion needs columns now gone
            result["champion_metrics"] = {}  # so the champion check fails, never passes unseen
            result["champion_error"] = f"the champion could not be evaluated on this data: {exc}"
    verdict = evaluation.gate(
        metrics,
        thresholds=request.get("thresholds") or {},
        champion=result["champion_metrics"],
        primary_metric=request.get("primary_metric"),
        tolerance=float(request.get("tolerance") or 0.0),
    )
    if "champion_error" in result:
        verdict["reasons"].insert(0, result["champion_error"])
    say(f"verdict: {verdict['verdict']}" + "".join(f"; {r}" for r in verdict["reasons"]))
    return {**result, **verdict, "rows": len(rows)}


def stage_python(request: dict[str, Any], workdir: Path) -> dict[str, Any]:
    function = load_function(request["function"], request.get("source_dir"))
    say(f"calling {request['function']}")
    value = function(workdir=str(workdir), **(request.get("args") or {}))
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        value = repr(value)
    return {"return": value}


STAGES: dict[str, Callable[[dict[str, Any], Path], dict[str, Any]]] = {
    "train": stage_train,
    "evaluate": stage_evaluate,
    "python": stage_python,
}


def write_result(workdir: Path, result: dict[str, Any]) -> None:
    """Write then rename, so the parent never reads half a file."""
    partial = workdir / (RESULT_FILE + ".partial")
    partial.write_text(json.dumps(result, indent=2, default=str))
    partial.replace(workdir / RESULT_FILE)


def _fail(workdir: Path, message: str, code: int) -> int:
    say(f"error: {message}")
    try:
        write_result(workdir, {"error": message})
    except OSError:
        traceback.print_exc()
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m app.pipelines.runner <request.json>", file=sys.stderr)
        return 1
    request = json.loads(Path(args[0]).read_text())
    workdir = Path(request["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    stage = request["stage"]
    limit = int(request.get("memory_limit_mb") or 0)
    oom = f"{STAGE_NAMES.get(stage, stage)} ran out of memory"
    oom += f" (limit {limit} MB)" if limit else ""
    try:
        if limit:
            limit_memory(limit)
        run = STAGES.get(stage)
        if run is None:
            raise KeyError(f"unknown stage {stage!r}; expected one of {sorted(STAGES)}")
        result = run(request, workdir)
    except MemoryError:
        return _fail(workdir, oom, 2)
    except USER_ERRORS as exc:
        return _fail(workdir, str(exc), 2)
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
            return _fail(workdir, oom, 2)
        traceback.print_exc()
        sys.stderr.flush()
        return _fail(workdir, f"unexpected error: {type(exc).__name__}: {exc}", 1)
    write_result(workdir, result)
    say(f"{stage} stage finished")
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.exit(main())
