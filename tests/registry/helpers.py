"""Real models, real files: a churn dataset, a fitted Pipeline, registered through the API."""

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio
from fastapi.testclient import TestClient
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

FEATURES = ["age", "income", "city"]


def churn_frame(rows: int = 200, seed: int = 7, extra: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, rows),
            "income": rng.normal(50_000, 12_000, rows).round(2),
            "city": rng.choice(["Paris", "Lyon", "Nice"], rows),
        }
    )
    if extra:
        frame["tenure"] = rng.integers(0, 10, rows)
    score = (frame["age"] - 45) / 20 + (frame["city"] == "Paris") * 0.8 + rng.normal(0, 0.5, rows)
    frame["churned"] = (score > 0.3).astype(int)
    return frame


def fit_pipeline(frame: pd.DataFrame, lenient: bool = True) -> Pipeline:
    """`lenient=False` makes a model that raises on a city it never saw, as a buggy one would."""
    numeric = [c for c in frame.columns if c not in ("city", "churned")]
    steps = [("fill", SimpleImputer()), ("scale", StandardScaler())]
    pipeline = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        (
                            "num",
                            Pipeline(steps),
                            numeric,
                        ),
                        (
                            "cat",
                            OneHotEncoder(handle_unknown="ignore" if lenient else "error"),
                            ["city"],
                        ),
                    ]
                ),
            ),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    )
    return pipeline.fit(frame.drop(columns=["churned"]), frame["churned"])


def skops_bytes(model: Any, tmp: Path) -> bytes:
    path = tmp / f"model-{id(model)}.skops"
    sio.dump(model, path)
    return path.read_bytes()


def csv_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue().encode()


class Registry:
    """Drives the API the way CI or a notebook would."""

    def __init__(self, api: TestClient, tmp: Path) -> None:
        self.api = api
        self.tmp = tmp
        self.experiment_id: int | None = None

    def dataset_version(self, frame: pd.DataFrame, name: str = "churn-data") -> dict[str, Any]:
        self.api.post("/api/v1/datasets", json={"name": name})
        response = self.api.post(
            f"/api/v1/datasets/{name}/versions", files={"file": ("d.csv", csv_bytes(frame))}
        )
        assert response.status_code in (200, 201), response.text
        return dict(response.json())

    def run_with_model(self, model: Any, *, params: dict[str, Any] | None = None) -> int:
        if self.experiment_id is None:
            created = self.api.post("/api/v1/experiments", json={"name": "reg"})
            if created.status_code == 409:  # another helper made it in this test already
                listed = self.api.get("/api/v1/experiments", params={"page_size": 100}).json()
                self.experiment_id = next(e["id"] for e in listed["items"] if e["name"] == "reg")
            else:
                self.experiment_id = created.json()["id"]
        run = self.api.post(
            "/api/v1/runs",
            json={
                "experiment_id": self.experiment_id,
                "params": params or {"C": 1.0},
                "code_version": {"repo": "file:///repo", "commit": "abc123", "branch": "main"},
            },
        ).json()
        self.api.post(
            f"/api/v1/runs/{run['id']}/metrics", json={"metrics": [{"key": "auc", "value": 0.87}]}
        )
        put = self.api.put(
            f"/api/v1/runs/{run['id']}/artifacts/model.skops", content=skops_bytes(model, self.tmp)
        )
        assert put.status_code == 200, put.text
        self.api.patch(f"/api/v1/runs/{run['id']}", json={"status": "finished"})
        return int(run["id"])

    def register(
        self, name: str, model: Any, dataset_version_id: int | None, **extra: Any
    ) -> dict[str, Any]:
        if self.api.get(f"/api/v1/models/{name}").status_code == 404:
            assert self.api.post("/api/v1/models", json={"name": name}).status_code == 201
        run_id = self.run_with_model(model)
        body: dict[str, Any] = {"run_id": run_id, "artifact_path": "model.skops", **extra}
        if dataset_version_id is not None:
            body |= {"dataset_version_id": dataset_version_id, "target": "churned"}
        response = self.api.post(f"/api/v1/models/{name}/versions", json=body)
        assert response.status_code == 202, response.text
        return dict(response.json())
