"""Explanations through the API, on real models registered the way CI would register them."""

import io
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from app.core.security import Role
from tests.conftest import InlineJobs
from tests.registry.helpers import FEATURES, Registry, churn_frame, fit_pipeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def registry(api: TestClient, tmp_path: Path) -> Registry:
    return Registry(api, tmp_path)


@pytest.fixture
def frame() -> pd.DataFrame:
    return churn_frame(200, seed=11)


def encoded(model: Any) -> Pipeline:
    prep = ColumnTransformer(
        [("num", StandardScaler(), ["age", "income"]), ("cat", OneHotEncoder(), ["city"])]
    )
    return Pipeline([("prep", prep), ("model", model)])


def register_ready(
    registry: Registry, jobs: InlineJobs, name: str, model: Any, frame: pd.DataFrame
) -> int:
    dataset = registry.dataset_version(frame, name=f"{name}-data")
    created = registry.register(name, model, dataset["id"])
    jobs.run()
    version = registry.api.get(f"/api/v1/models/{name}/versions/{created['version']}").json()
    assert version["status"] == "ready", version["status_message"]
    return int(created["version"])


def rows_of(frame: pd.DataFrame, n: int) -> list[dict[str, Any]]:
    return [
        {"age": int(r.age), "income": float(r.income), "city": str(r.city)}
        for r in frame.head(n).itertuples()
    ]


def check_additive(body: dict[str, Any]) -> None:
    assert body["additivity"]["holds"] and not body["approximate"], body["approximations"]
    for row in body["rows"]:
        for out in row["outputs"]:
            assert set(out["shap_values"]) == set(FEATURES)
            total = out["base_value"] + sum(out["shap_values"].values())
            assert total == pytest.approx(out["output"], abs=1e-6)


def test_tree_ensemble_rows_add_up_to_the_predicted_probabilities(
    api: TestClient, registry: Registry, jobs: InlineJobs, frame: pd.DataFrame
) -> None:
    model = encoded(RandomForestClassifier(25, random_state=0)).fit(
        frame[FEATURES], frame["churned"]
    )
    register_ready(registry, jobs, "forest", model, frame)
    rows = rows_of(frame, 6)
    response = api.post("/api/v1/models/forest/versions/1/explain", json={"rows": rows})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["explainer"] == "tree" and body["output_space"] == "probability"
    assert body["features"] == FEATURES and body["classes"] == [0, 1]
    check_additive(body)
    expected = model.predict_proba(frame[FEATURES].head(6))
    got = [[o["output"] for o in row["outputs"]] for row in body["rows"]]
    np.testing.assert_allclose(got, expected, atol=1e-9)

    # one class only, and the alias resolves like everywhere else
    api.put("/api/v1/models/forest/aliases/champion", json={"version": 1})
    chosen = api.post(
        "/api/v1/models/forest/versions/champion/explain", json={"rows": rows, "output_class": 1}
    ).json()
    assert [len(row["outputs"]) for row in chosen["rows"]] == [1] * 6
    assert chosen["rows"][0]["outputs"][0] == body["rows"][0]["outputs"][1]


def test_linear_pipeline_is_explained_in_original_columns(
    api: TestClient, registry: Registry, jobs: InlineJobs, frame: pd.DataFrame
) -> None:
    model = fit_pipeline(frame)
    register_ready(registry, jobs, "linear", model, frame)
    split = {"columns": FEATURES, "data": [[30, 41000.5, "Nice"], [70, 62000.0, "Paris"]]}
    response = api.post("/api/v1/models/linear/versions/1/explain", json={"dataframe_split": split})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["explainer"] == "linear" and body["output_space"] == "log_odds"
    check_additive(body)
    rows = pd.DataFrame(split["data"], columns=FEATURES)
    logits = model.decision_function(rows)
    assert [row["outputs"][1]["output"] for row in body["rows"]] == pytest.approx(logits)
    # the three one-hot columns of city come back as one value: coef . (x - background mean)
    background = frame.sample(n=100, random_state=0)[FEATURES]
    prep, coef = model[:-1], model[-1].coef_[0]
    city = ((prep.transform(rows) - prep.transform(background).mean(axis=0)) * coef)[:, 2:]
    got = [row["outputs"][1]["shap_values"]["city"] for row in body["rows"]]
    assert got == pytest.approx(city.sum(axis=1))


def test_knn_takes_the_model_agnostic_path_with_a_budget(
    api: TestClient, registry: Registry, jobs: InlineJobs, frame: pd.DataFrame
) -> None:
    model = encoded(KNeighborsClassifier(9)).fit(frame[FEATURES], frame["churned"])
    register_ready(registry, jobs, "knn", model, frame)
    url = "/api/v1/models/knn/versions/1/explain"
    body = api.post(url, json={"rows": rows_of(frame, 3), "max_evals": 50}).json()
    assert body["explainer"] == "kernel" and body["background_rows"] == 50
    check_additive(body)
    got = [[o["output"] for o in row["outputs"]] for row in body["rows"]]
    np.testing.assert_allclose(got, model.predict_proba(frame[FEATURES].head(3)))

    small = api.post(url, json={"rows": rows_of(frame, 1), "max_evals": 3})
    assert small.status_code == 422
    assert small.json()["error"]["code"] == "budget_too_small"
    assert "at least 2 x features + 1 = 7" in small.json()["error"]["message"]


def test_bad_rows_unsupported_models_and_unready_versions_are_clear_4xx(
    api: TestClient, registry: Registry, jobs: InlineJobs, frame: pd.DataFrame, auth: Any
) -> None:
    register_ready(registry, jobs, "churn", fit_pipeline(frame), frame)
    url = "/api/v1/models/churn/versions/1/explain"
    good = {"age": 40, "income": 50000.0, "city": "Lyon"}
    cases = [
        ({"rows": [{**good, "zip": "75001"}]}, "unknown column(s) ['zip']"),
        ({"rows": [{"age": 40, "income": 1.0}]}, "missing required column 'city'"),
        ({"rows": [{**good, "age": "old"}]}, "column 'age' expects integer"),
        ({"rows": []}, "send at least one row"),
    ]
    for payload, message in cases:
        response = api.post(url, json=payload)
        assert response.status_code == 422, payload
        assert response.json()["error"]["code"] == "invalid_input"
        assert message in response.json()["error"]["message"]
    wrong_class = api.post(url, json={"rows": [good], "output_class": "maybe"})
    assert wrong_class.status_code == 422 and "[0, 1]" in wrong_class.json()["error"]["message"]
    assert api.post(url, json={"rows": [good], "extra": 1}).status_code == 422
    assert (
        api.post("/api/v1/models/churn/versions/9/explain", json={"rows": [good]}).status_code
        == 404
    )

    cluster = encoded(KMeans(2, n_init=1, random_state=0)).fit(frame[FEATURES])
    register_ready(registry, jobs, "clusters", cluster, frame)
    refused = api.post("/api/v1/models/clusters/versions/1/explain", json={"rows": [good]})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "unsupported_model"
    assert "KMeans" in refused.json()["error"]["message"]

    signature = {"inputs": [{"name": "age", "type": "integer"}]}
    registry.register("churn", fit_pipeline(frame), None, signature=signature)  # not run: pending
    pending = api.post("/api/v1/models/churn/versions/2/explain", json={"rows": [good]})
    assert pending.status_code == 409 and "pending" in pending.json()["error"]["message"]

    viewer = api.post(url, json={"rows": [good]}, headers=auth(Role.viewer))
    assert viewer.status_code == 200
    denied = api.post(
        "/api/v1/models/churn/versions/1/importance", json={}, headers=auth(Role.viewer)
    )
    assert denied.status_code == 403


def test_importance_is_a_cached_job_and_drift_compares_two_versions(
    api: TestClient, registry: Registry, jobs: InlineJobs, frame: pd.DataFrame
) -> None:
    register_ready(registry, jobs, "churn", fit_pipeline(frame), frame)
    # version 2 learns from income alone: the ranking of features changes
    shifted = frame.assign(churned=(frame["income"] > frame["income"].median()).astype(int))
    model = encoded(RandomForestClassifier(20, random_state=0)).fit(
        shifted[FEATURES], shifted["churned"]
    )
    dataset = registry.dataset_version(shifted, name="shifted")
    registry.register("churn", model, dataset["id"])
    jobs.run()
    base = "/api/v1/models/churn/versions"

    assert api.get(f"{base}/1/importance").status_code == 404
    early = api.get(f"{base}/2/attribution-drift", params={"baseline": 1})
    assert early.status_code == 409 and early.json()["error"]["code"] == "importance_not_ready"

    queued = api.post(f"{base}/1/importance", json={"sample_rows": 150})
    assert queued.status_code == 202, queued.text
    assert queued.json()["status"] == "pending" and not queued.json()["cached"]
    assert api.get(f"{base}/1/importance").json()["status"] == "pending"
    assert jobs.run() == ["explain.importance"]

    result = api.get(f"{base}/1/importance").json()
    assert result["status"] == "ready" and result["sample_size"] == 150
    assert result["computed_at"] and result["explainer"] == "linear"
    assert result["rows_per_second"] > 0
    ranked = [f["feature"] for f in result["features"]]
    assert ranked[0] == "age" and sorted(ranked) == sorted(FEATURES)
    values = [f["mean_abs_shap"] for f in result["features"]]
    assert values == sorted(values, reverse=True) and all(v > 0 for v in values)

    again = api.post(f"{base}/1/importance", json={"sample_rows": 150})
    assert again.status_code == 200 and again.json()["cached"]
    assert again.json()["id"] == result["id"] and again.json()["features"] == result["features"]
    assert jobs.run() == []
    assert (
        api.post(f"{base}/1/importance", json={"sample_rows": 150, "refresh": True}).status_code
        == 202
    )
    assert jobs.run() == ["explain.importance"]

    assert api.post(f"{base}/2/importance", json={"sample_rows": 150}).status_code == 202
    jobs.run()
    second = api.get(f"{base}/2/importance").json()
    assert second["explainer"] == "tree" and second["features"][0]["feature"] == "income"
    assert second["data_digest"] != result["data_digest"]

    drift = api.get(f"{base}/2/attribution-drift", params={"baseline": 1, "threshold": 0.95})
    assert drift.status_code == 200, drift.text
    assert drift.json()["drifted"] and drift.json()["ndcg"] < 0.95
    changes = {c["feature"]: c for c in drift.json()["rank_changes"]}
    assert changes["income"]["candidate_rank"] == 1 and changes["age"]["reference_rank"] == 1
    same = api.get(f"{base}/1/attribution-drift", params={"baseline": 1}).json()
    assert same["ndcg"] == pytest.approx(1.0) and not same["drifted"]


def test_plots_are_png_and_svg(
    api: TestClient, registry: Registry, jobs: InlineJobs, frame: pd.DataFrame
) -> None:
    register_ready(registry, jobs, "churn", fit_pipeline(frame), frame)
    base = "/api/v1/models/churn/versions/1"
    assert api.get(f"{base}/importance/plot").status_code == 409
    api.post(f"{base}/importance", json={"sample_rows": 50})
    jobs.run()

    png = api.get(f"{base}/importance/plot", params={"format": "png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(PNG_MAGIC)
    svg = api.get(f"{base}/importance/plot", params={"format": "svg"})
    assert svg.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(svg.content)
    assert root.tag.endswith("svg") and b"income" in svg.content

    rows = rows_of(frame, 2)
    waterfall = api.post(f"{base}/explain/plot", params={"row": 1}, json={"rows": rows})
    assert waterfall.status_code == 200 and waterfall.content.startswith(PNG_MAGIC)
    waterfall_svg = api.post(f"{base}/explain/plot?format=svg", json={"rows": rows})
    assert ET.fromstring(waterfall_svg.content).tag.endswith("svg")
    assert f"city = {rows[0]['city']}".encode() in waterfall_svg.content
    assert api.post(f"{base}/explain/plot?row=5", json={"rows": rows}).status_code == 422
    assert api.get(f"{base}/importance/plot?format=gif").status_code == 422


def timed_dataset(api: TestClient, name: str, seed: int) -> dict[str, Any]:
    """Churn rows with a timestamp column, uploaded as Parquet so `ts` stays a datetime."""
    frame = churn_frame(200, seed=seed)
    frame.insert(0, "ts", pd.date_range("2026-01-01", periods=len(frame), freq="h"))
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    api.post("/api/v1/datasets", json={"name": name})
    reply = api.post(
        f"/api/v1/datasets/{name}/versions", files={"file": ("d.parquet", buffer.getvalue())}
    )
    assert reply.status_code == 201, reply.text
    assert {c["name"]: c["type"] for c in reply.json()["schema"]}["ts"] == "datetime"
    return dict(reply.json()) | {"frame": frame}


def test_importance_of_a_model_whose_data_has_a_datetime_column_and_failures_say_why(
    api: TestClient, registry: Registry, jobs: InlineJobs
) -> None:
    base = "/api/v1/models/timed/versions"
    for version, seed in ((1, 11), (2, 12)):
        dataset = timed_dataset(api, f"timed-{seed}", seed)
        frame = dataset["frame"]
        model = encoded(RandomForestClassifier(10, random_state=0)).fit(
            frame.drop(columns="churned"), frame["churned"]
        )
        registry.register("timed", model, dataset["id"])
        jobs.run()
        assert api.get(f"{base}/{version}").json()["status"] == "ready"
    assert api.post(f"{base}/1/importance", json={"sample_rows": 50}).status_code == 202
    jobs.run()
    result = api.get(f"{base}/1/importance").json()
    assert result["status"] == "ready", result["status_message"]
    by_feature = {f["feature"]: f["mean_abs_shap"] for f in result["features"]}
    assert set(by_feature) == {"ts", *FEATURES} and by_feature["ts"] == 0.0  # the model drops it

    # version 2's reference data is gone: its importance fails, and drift says so and why
    reference = api.get("/api/v1/datasets/timed-12/versions/1").json()
    jobs.ctx.artifacts.resolve(reference["uri"]).unlink()
    assert api.post(f"{base}/2/importance", json={"sample_rows": 50}).status_code == 202
    jobs.run()
    failed = api.get(f"{base}/2/importance").json()
    assert failed["status"] == "failed" and "could not be read" in failed["status_message"]
    drift = api.get(f"{base}/2/attribution-drift", params={"baseline": 1})
    assert drift.status_code == 409, drift.text
    error = drift.json()["error"]
    assert error["code"] == "importance_failed" and "failed: the reference data" in error["message"]
    assert error["details"]["reason"] == failed["status_message"]
    assert "wait" not in error["message"]
