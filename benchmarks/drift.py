"""Drift benchmark: Flywheel's dataset_drift against Evidently 0.7's DataDriftPreset on the same
data, beside two plain baselines (a scipy Wasserstein pass and a numpy PSI pass).

Reference 100,000 rows and current 1,000,000 rows x 50 numeric features (normal, lognormal,
gamma, uniform and Student-t, 5 of them shifted by 0.2 of their reference std), seeded.
Flywheel profiles the reference once with profile_frame (timed apart: it happens at dataset
upload) and compares the current columns, as numpy arrays, with that stored profile only.
Evidently gets both raw frames. Each side runs in a child process of its own that loads the
same .npy files and reports its compute time and peak RSS (ru_maxrss), so both peaks include
the same data. Evidently 0.7 does not import with pandas 3, so it runs in its own venv,
.bench/evidently-venv (created here when missing).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.ml.drift import dataset_drift
from app.ml.profile import profile_frame

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "drift.json"
EVIDENTLY_VENV = ROOT / ".bench" / "evidently-venv"
EVIDENTLY_REQUIREMENTS = ("evidently==0.7.*", "pandas<3")
REFERENCE_ROWS, CURRENT_ROWS, FEATURES, SEED = 100_000, 1_000_000, 50, 20261127
SHIFTED, SHIFT_STD = (0, 11, 22, 33, 44), 0.2  # one feature of each distribution
DISTRIBUTIONS = ("normal", "lognormal", "gamma", "uniform", "student_t")
SPEED_TARGET, MEMORY_TARGET = 10.0, 0.5  # >= 10x faster, <= half Evidently's peak RSS
ISSUE_BASELINES = {"scipy_wasserstein_s": 11.0, "plain_psi_s": 2.0}  # quoted in the issue
PSI_BINS, PSI_EPSILON = 20, 1e-4
FLYWHEEL_RUNS = 3  # median reported; Evidently runs once (it takes minutes)

# Runs in the Evidently venv: no Flywheel import, reads the .npy files, writes JSON.
EVIDENTLY_CHILD = """
import json, resource, sys, time
import numpy as np, pandas as pd
import evidently
from evidently import Report
from evidently.presets import DataDriftPreset
folder, out = sys.argv[1], sys.argv[2]
names = json.load(open(f"{folder}/names.json"))
reference = pd.DataFrame(np.load(f"{folder}/reference.npy").T, columns=names)
current = pd.DataFrame(np.load(f"{folder}/current.npy").T, columns=names)
loaded = time.perf_counter()
rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
snapshot = Report([DataDriftPreset()]).run(current_data=current, reference_data=reference)
ran = time.perf_counter()
metrics = snapshot.dict()["metrics"]
done = time.perf_counter()
features, count = {}, None
for metric in metrics:
    config = metric["config"]
    if config["type"].endswith("ValueDrift"):
        method, threshold, value = config["method"], config["threshold"], metric["value"]
        drifted = value < threshold if "p_value" in method else value >= threshold
        features[config["column"]] = {"method": method, "threshold": threshold,
                                      "statistic": value, "drifted": bool(drifted)}
    elif config["type"].endswith("DriftedColumnsCount"):
        count = metric["value"]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
json.dump({"version": evidently.__version__, "pandas": pd.__version__,
           "compute_s": ran - loaded, "to_dict_s": done - ran, "busy_s": done - loaded,
           "peak_rss_kb": peak,
           "rss_after_load_kb": rss_loaded, "features": features, "drifted_columns_count": count},
          open(out, "w"))
"""


def rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def make_data(folder: Path, rows: tuple[int, int], features: int, seed: int) -> list[str]:
    """Reference and current matrices (one row per feature, so columns are contiguous)."""
    rng = np.random.default_rng(seed)
    names = [f"f{i:02d}_{DISTRIBUTIONS[i % len(DISTRIBUTIONS)]}" for i in range(features)]
    sides = {"reference": np.empty((features, rows[0])), "current": np.empty((features, rows[1]))}
    for i in range(features):
        kind, loc, scale = (
            DISTRIBUTIONS[i % len(DISTRIBUTIONS)],
            rng.normal(0, 10),
            rng.uniform(0.5, 5),
        )
        for matrix in sides.values():
            size = matrix.shape[1]
            if kind == "normal":
                values = rng.normal(loc, scale, size)
            elif kind == "lognormal":
                values = rng.lognormal(0, 0.5, size) * scale
            elif kind == "gamma":
                values = rng.gamma(2.0, scale, size)
            elif kind == "uniform":
                values = rng.uniform(loc, loc + scale, size)
            else:
                values = loc + scale * rng.standard_t(5, size)
            matrix[i] = values
        if i in SHIFTED:
            sides["current"][i] += SHIFT_STD * sides["reference"][i].std()
    for side, matrix in sides.items():
        np.save(folder / f"{side}.npy", matrix)
    (folder / "names.json").write_text(json.dumps(names))
    return names


def profile_reference(folder: Path, names: list[str]) -> float:
    """profile_frame on the reference, as at dataset upload; returns its seconds."""
    frame = pd.DataFrame(np.load(folder / "reference.npy").T, columns=names)
    began = time.perf_counter()
    profile = profile_frame(frame)
    seconds = time.perf_counter() - began
    (folder / "profile.json").write_text(json.dumps(profile))
    return seconds


def child_flywheel(folder: Path, out: Path) -> None:
    """Load the current columns and the stored profile only; time dataset_drift."""
    began = time.perf_counter()
    names = json.loads((folder / "names.json").read_text())
    current = np.load(folder / "current.npy")
    profile = json.loads((folder / "profile.json").read_text())
    columns = {name: current[i] for i, name in enumerate(names)}
    loaded, rss_loaded = time.perf_counter(), rss_kb()
    runs = []
    for _ in range(FLYWHEEL_RUNS):
        start = time.perf_counter()
        result = dataset_drift(profile, columns)
        runs.append(time.perf_counter() - start)
    document = result.to_dict()
    features = {
        name: {k: f[k] for k in ("method", "threshold", "statistic", "drifted")}
        for name, f in document["features"].items()
    }
    summary = {"load_s": loaded - began, "compute_s": float(np.median(runs)), "runs_s": runs}
    summary["busy_s"] = time.perf_counter() - loaded
    summary |= {"peak_rss_kb": rss_kb(), "rss_after_load_kb": rss_loaded}
    summary |= {"features": features, "drifted_share": document["drifted_share"]}
    out.write_text(json.dumps(summary))


def child_baselines(folder: Path, out: Path) -> None:
    """Plain per-column passes on the raw data: scipy's Wasserstein and a numpy PSI."""
    from scipy import stats  # only the baseline needs it here

    reference, current = np.load(folder / "reference.npy"), np.load(folder / "current.npy")
    began = time.perf_counter()
    distances = [
        float(stats.wasserstein_distance(r, c) / r.std())
        for r, c in zip(reference, current, strict=True)
    ]
    middle = time.perf_counter()
    psis = []
    for r, c in zip(reference, current, strict=True):
        edges = np.histogram_bin_edges(r, bins=PSI_BINS)
        p = np.histogram(r, edges)[0] / r.size
        q = np.histogram(c, edges)[0] / c.size
        p, q = np.where(p == 0, PSI_EPSILON, p), np.where(q == 0, PSI_EPSILON, q)
        psis.append(float(np.sum((q - p) * np.log(q / p))))
    ended = time.perf_counter()
    summary: dict[str, Any] = {"scipy_wasserstein_s": middle - began}
    summary["plain_psi_s"] = ended - middle
    summary["compute_s"] = summary["busy_s"] = ended - began
    summary |= {"wasserstein": distances, "psi": psis, "peak_rss_kb": rss_kb()}
    out.write_text(json.dumps(summary))


def run_child(command: list[str], out: Path) -> dict[str, Any]:
    """Run one side in its own process; its wall time from here, its report from its file."""
    env = os.environ | {"DO_NOT_TRACK": "1", "PYTHONWARNINGS": "ignore"}
    began = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - began
    if finished.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed:\n{finished.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(out.read_text())
    return report | {"process_wall_s": wall, "startup_and_load_s": wall - report["busy_s"]}


def evidently_python() -> tuple[Path | None, str]:
    """The Evidently venv's python, created and installed when missing; else why not."""
    python = EVIDENTLY_VENV / "bin" / "python"
    probe = [str(python), "-c", "import evidently; print(evidently.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python, "present"
    print(f"creating {EVIDENTLY_VENV.relative_to(ROOT)} with {' '.join(EVIDENTLY_REQUIREMENTS)}")
    steps = [
        ["python3.11", "-m", "venv", str(EVIDENTLY_VENV)],
        [str(python), "-m", "pip", "install", "-q", *EVIDENTLY_REQUIREMENTS],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return None, f"`{' '.join(step)}` failed: {done.stderr.strip()[-500:]}"
    if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        return None, "evidently was installed but does not import"
    return python, "created"


def verdicts(features: dict[str, Any]) -> set[str]:
    return {name for name, f in features.items() if f["drifted"]}


def margins(features: dict[str, Any], shifted: set[str]) -> dict[str, float]:
    """How far the verdicts are from flipping: the largest statistic on an unshifted feature
    and the smallest on a shifted one (both sides use normalized Wasserstein here)."""
    values = {name: f["statistic"] for name, f in features.items()}
    return {
        "max_unshifted": max(v for n, v in values.items() if n not in shifted),
        "min_shifted": min(v for n, v in values.items() if n in shifted),
    }


def compare(
    names: list[str], flywheel: dict[str, Any], evidently: dict[str, Any] | None
) -> dict[str, Any]:
    """Per-feature agreement and the PASS/MISS targets."""
    shifted = {names[i] for i in SHIFTED if i < len(names)}
    unshifted = set(names) - shifted
    ours = verdicts(flywheel["features"])
    found: dict[str, Any] = {
        "shifted": sorted(shifted),
        "flywheel_margins": margins(flywheel["features"], shifted),
        "flywheel_flags": sorted(ours),
        "flywheel_exact": ours == shifted,
        "flywheel_false_alarms": sorted(ours & unshifted),
    }
    targets: dict[str, bool | None] = {
        "flywheel flags exactly the shifted features": ours == shifted,
        "no false alarm on the unshifted features": not ours & unshifted,
    }
    if evidently is not None:
        theirs = verdicts(evidently["features"])
        speed = evidently["compute_s"] / flywheel["compute_s"]
        memory = flywheel["peak_rss_kb"] / evidently["peak_rss_kb"]
        both = [n for n in names if flywheel["features"][n]["statistic"] is not None]
        gap = max(
            abs(flywheel["features"][n]["statistic"] - evidently["features"][n]["statistic"])
            for n in both
        )
        found |= {
            "evidently_margins": margins(evidently["features"], shifted),
            "max_statistic_difference": gap,
            "evidently_flags": sorted(theirs),
            "evidently_false_alarms": sorted(theirs & unshifted),
            "evidently_missed": sorted(shifted - theirs),
            "disagreements": sorted(ours ^ theirs),
            "speedup": speed,
            "memory_ratio": memory,
        }
        targets = {
            f">= {SPEED_TARGET:g}x faster than Evidently": speed >= SPEED_TARGET,
            f"<= {MEMORY_TARGET:g} of Evidently's peak memory": memory <= MEMORY_TARGET,
            "same verdicts as Evidently on the shifted features": ours & shifted
            == theirs & shifted,
        } | targets
    found["targets"] = targets
    return found


def report(
    profiling_s: float,
    flywheel: dict[str, Any],
    evidently: dict[str, Any] | None,
    why_not: str,
    baselines: dict[str, Any],
    found: dict[str, Any],
) -> None:
    def mb(kb: float) -> str:
        return f"{kb / 1024:,.0f} MB"

    print(f"\nreference profiling (profile_frame, once at upload): {profiling_s:.2f} s")

    def seconds(value: float) -> str:
        return f"{value:.2f} s"

    rows: list[tuple[str, str, Callable[[float], str]]] = [
        ("drift compute (Flywheel: median)", "compute_s", seconds),
        ("child start, imports, load", "startup_and_load_s", seconds),
        ("peak RSS", "peak_rss_kb", mb),
        ("RSS after loading data", "rss_after_load_kb", mb),
    ]
    label = f"Evidently {evidently['version']}" if evidently else "Evidently"
    print(f"\n{'':34}{'Flywheel':>14}{label:>20}{'ratio':>10}")
    for name, key, fmt in rows:
        other, ratio = ("n/a", "")
        if evidently is not None:
            other = fmt(evidently[key])
            value = evidently[key] / flywheel[key]
            ratio = f"{value:.1f}x" if "rss" not in key else f"{1 / value:.2f}"
        print(f"{name:34}{fmt(flywheel[key]):>14}{other:>20}{ratio:>10}")
    print(
        f"\nbaselines on the raw data (same machine, same run): scipy.stats.wasserstein_distance "
        f"per column {baselines['scipy_wasserstein_s']:.2f} s (issue: ~11 s), plain PSI "
        f"{baselines['plain_psi_s']:.2f} s (issue: ~2 s)"
    )
    if evidently is None:
        print(f"\nEvidently was not run: {why_not}")
    print(f"\nshifted by {SHIFT_STD} std: {', '.join(found['shifted'])}")
    print(f"Flywheel flags:  {', '.join(found['flywheel_flags']) or 'none'}")
    if evidently is not None:
        print(f"Evidently flags: {', '.join(found['evidently_flags']) or 'none'}")
        print(f"disagreements:   {', '.join(found['disagreements']) or 'none'}")
    sides = [("Flywheel", found["flywheel_margins"])]
    if evidently is not None:
        sides.append(("Evidently", found["evidently_margins"]))
    for side, margin in sides:
        print(
            f"{side}: largest statistic on an unshifted feature {margin['max_unshifted']:.4f}, "
            f"smallest on a shifted one {margin['min_shifted']:.4f} (threshold 0.1)"
        )
    if evidently is not None:
        print(
            "largest per-feature difference between the two statistics (profile vs raw rows): "
            f"{found['max_statistic_difference']:.4f}"
        )
    print()
    for target, met in found["targets"].items():
        print(f"  {'PASS' if met else 'MISS'}  {target}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reference-rows", type=int, default=REFERENCE_ROWS)
    parser.add_argument("--current-rows", type=int, default=CURRENT_ROWS)
    parser.add_argument("--features", type=int, default=FEATURES)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--skip-evidently", action="store_true")
    parser.add_argument("--child", choices=("flywheel", "baselines"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        (child_flywheel if args.child == "flywheel" else child_baselines)(args.folder, args.out)
        return
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    began, load = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    print(f"load average before: {load} on {os.cpu_count()} CPUs (other work skews timings)")
    python, why_not = (None, "--skip-evidently") if args.skip_evidently else evidently_python()
    with tempfile.TemporaryDirectory(prefix="flywheel-drift-bench-") as scratch:
        folder = Path(scratch)
        rows = (args.reference_rows, args.current_rows)
        names = make_data(folder, rows, args.features, args.seed)
        print(f"data: reference {rows[0]:,} x {len(names)}, current {rows[1]:,} x {len(names)}")
        profiling_s = profile_reference(folder, names)
        me = [sys.executable, str(Path(__file__).resolve()), "--folder", str(folder)]
        flywheel = run_child(
            [*me, "--child", "flywheel", "--out", str(folder / "fw.json")], folder / "fw.json"
        )
        print(f"Flywheel: dataset_drift {flywheel['compute_s']:.2f} s")
        evidently = None
        if python is not None:
            command = [str(python), "-c", EVIDENTLY_CHILD, str(folder), str(folder / "ev.json")]
            try:
                evidently = run_child(command, folder / "ev.json")
                print(f"Evidently: DataDriftPreset {evidently['compute_s']:.2f} s")
            except RuntimeError as error:
                why_not = str(error)
        baselines = run_child(
            [*me, "--child", "baselines", "--out", str(folder / "bl.json")], folder / "bl.json"
        )
    found = compare(names, flywheel, evidently)
    report(profiling_s, flywheel, evidently, why_not, baselines, found)
    after = [round(x, 2) for x in os.getloadavg()]
    print(f"\nload average after: {after}; total {time.perf_counter() - began:.0f} s")
    document = {
        "measured_at": datetime.now(UTC).isoformat(),
        "load_average_before": load,
        "load_average_after": after,
        "cpus": os.cpu_count(),
        "reference_rows": rows[0],
        "current_rows": rows[1],
        "features": len(names),
        "shift_std": SHIFT_STD,
        "seed": args.seed,
        "reference_profiling_s": profiling_s,
        "flywheel": flywheel,
        "evidently": evidently,
        "evidently_not_run": None if evidently else why_not,
        "baselines": baselines,
        "issue_baselines": ISSUE_BASELINES,
        "comparison": found,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
