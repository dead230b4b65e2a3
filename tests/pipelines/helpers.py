"""Specs, data and repositories for pipeline tests: real CSV files, real git repositories."""

import subprocess
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.registry.helpers import churn_frame, csv_bytes

TRAIN_MODULE = """
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler


def train(frame, params):
    features = frame.drop(columns=["churned"])
    numeric = [c for c in features.columns if c != "city"]
    prep = ColumnTransformer([
        ("num", Pipeline([("fill", SimpleImputer()), ("scale", StandardScaler())]), numeric),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
    ])
    clf = LogisticRegression(C=float(params.get("C", 1.0)), max_iter=500)
    model = Pipeline([("prep", prep), ("clf", clf)])
    print("fitting on", len(frame), "rows", flush=True)
    return model.fit(features, frame["churned"])
"""

FLYWHEEL_YAML = """
train:
  entrypoint: churn_model:train
  target: churned
  params:
    C: 0.5
"""


def ci_spec(
    model: str = "churn",
    *,
    entrypoint: bool = True,
    min_accuracy: float = 0.6,
    deploy: str | None = None,
) -> dict[str, Any]:
    """train → evaluate → register (when blessed) → package, then deploy to staging if named."""
    train_params: dict[str, Any] = (
        {"entrypoint": "repo", "dataset": "churn"}
        if entrypoint
        else {
            "estimator": "sklearn.linear_model.LogisticRegression",
            "hyperparameters": {"max_iter": 500},
            "target": "churned",
            "dataset": "churn",
        }
    )
    deploy_tasks = (
        []
        if deploy is None
        else [
            {
                "name": "deploy",
                "type": "deploy",
                "depends_on": ["package"],
                "params": {"deployment": deploy},
            }
        ]
    )
    return {
        "tasks": [
            {"name": "train", "type": "train", "params": train_params, "timeout": 300},
            {
                "name": "evaluate",
                "type": "evaluate",
                "depends_on": ["train"],
                "params": {"thresholds": {"min": {"accuracy": min_accuracy}}, "tolerance": 0.0},
            },
            {
                "name": "register",
                "type": "register",
                "depends_on": ["evaluate"],
                "when": "blessed:evaluate",
                "params": {"model": model},
            },
            {"name": "package", "type": "package", "depends_on": ["register"]},
            *deploy_tasks,
        ]
    }


def create(api: TestClient, name: str, spec: dict[str, Any]) -> None:
    response = api.post("/api/v1/pipelines", json={"name": name, "spec": spec})
    assert response.status_code == 201, response.text


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def make_repo(root: Path) -> tuple[Path, str]:
    """A real repository with flywheel.yaml and a training module; returns (path, commit)."""
    repo = root / "churn-repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "ml@example.com")
    git(repo, "config", "user.name", "ML Engineer")
    (repo / "flywheel.yaml").write_text(FLYWHEEL_YAML)
    (repo / "churn_model.py").write_text(TRAIN_MODULE)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "churn model")
    return repo, git(repo, "rev-parse", "HEAD")


def upload_churn(api: TestClient, rows: int = 300, seed: int = 7) -> dict[str, Any]:
    if api.get("/api/v1/datasets/churn").status_code == 404:
        api.post("/api/v1/datasets", json={"name": "churn"})
    response = api.post(
        "/api/v1/datasets/churn/versions",
        files={"file": ("churn.csv", csv_bytes(churn_frame(rows=rows, seed=seed)))},
    )
    assert response.status_code in (200, 201), response.text
    return dict(response.json())
