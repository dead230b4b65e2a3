import json
import pickle
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.security import Role
from tests.conftest import InlineJobs
from tests.datasets.files import stored_files
from tests.registry.helpers import FEATURES, Registry, churn_frame, fit_pipeline, skops_bytes


@pytest.fixture
def registry(api: TestClient, tmp_path: Path) -> Registry:
    return Registry(api, tmp_path)


def test_version_goes_pending_then_ready_with_signature_sample_and_metrics(
    api: TestClient, registry: Registry, jobs: InlineJobs
) -> None:
    frame = churn_frame()
    dataset = registry.dataset_version(frame)
    created = registry.register("churn", fit_pipeline(frame), dataset["id"], description="first")
    assert created["status"] == "pending" and created["version"] == 1
    assert created["artifact_types"] and "sklearn.pipeline.Pipeline" in created["artifact_types"]

    assert jobs.run() == ["registry.finalize_version"]
    version = api.get("/api/v1/models/churn/versions/1").json()
    assert version["status"] == "ready", version["status_message"]
    assert version["model_class"] == "sklearn.pipeline.Pipeline"
    assert version["signature"]["inputs"] == [
        {"name": "age", "type": "integer", "nullable": False},
        {"name": "income", "type": "float", "nullable": False},
        {"name": "city", "type": "string", "nullable": False},
    ]
    assert version["signature"]["output"]["kind"] == "classification"
    assert version["signature"]["output"]["classes"] == [0, 1]
    assert version["metrics"] == {"auc": 0.87}
    assert version["compatibility"]["verdict"] == "no_champion"
    assert version["dataset_version_id"] == dataset["id"]

    events = api.get("/api/v1/models/churn/versions/1").json()
    assert events["created_by"] == "test-admin"


def test_background_sample_is_seeded_and_predictable(
    api: TestClient, registry: Registry, jobs: InlineJobs, session
) -> None:
    from app.registry.models import ModelVersion

    frame = churn_frame()
    dataset = registry.dataset_version(frame)
    created = registry.register("churn", fit_pipeline(frame), dataset["id"])
    jobs.run()
    version = session.get(ModelVersion, created["id"])
    sample = version.background_sample
    assert sample["columns"] == FEATURES and len(sample["rows"]) == 100 and sample["seed"] == 0
    expected = frame.sample(n=100, random_state=0)[FEATURES].to_numpy().tolist()
    assert [row[2] for row in sample["rows"]] == [row[2] for row in expected]


def test_numbering_is_sequential_per_model(
    api: TestClient, registry: Registry, jobs: InlineJobs
) -> None:
    frame = churn_frame()
    model = fit_pipeline(frame)
    numbers = [
        registry.register("a", model, None, signature={"inputs": _inputs()})["version"]
        for _ in range(3)
    ]
    other = registry.register("b", model, None, signature={"inputs": _inputs()})["version"]
    assert numbers == [1, 2, 3] and other == 1
    jobs.run()
    listed = api.get("/api/v1/models/a/versions").json()["items"]
    assert [v["version"] for v in listed] == [1, 2, 3]
    assert all(v["status"] == "ready" for v in listed)
    assert api.get("/api/v1/models/a").json()["latest_version"] == 3


def _inputs() -> list[dict[str, object]]:
    return [
        {"name": "age", "type": "integer"},
        {"name": "income", "type": "float"},
        {"name": "city", "type": "string"},
    ]


def test_signature_must_cover_the_fitted_columns(
    api: TestClient, registry: Registry, jobs: InlineJobs
) -> None:
    model = fit_pipeline(churn_frame())
    registry.register("m", model, None, signature={"inputs": [{"name": "age", "type": "integer"}]})
    jobs.run()
    version = api.get("/api/v1/models/m/versions/1").json()
    assert version["status"] == "failed"
    assert "income" in version["status_message"] and "city" in version["status_message"]


def test_pickle_and_joblib_uploads_are_refused(
    api: TestClient, registry: Registry, tmp_path: Path
) -> None:
    import joblib

    api.post("/api/v1/models", json={"name": "p"})
    model = fit_pipeline(churn_frame())
    pickled = pickle.dumps(model)
    joblib.dump(model, tmp_path / "m.joblib", compress=3)
    for content in (pickled, (tmp_path / "m.joblib").read_bytes()):
        response = api.post(
            "/api/v1/models/p/versions/upload", files={"file": ("model.pkl", content)}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "unsafe_model_file"
        assert "skops" in response.json()["error"]["message"]
    # the same through a run artifact
    run_id = registry.run_with_model(model)
    api.put(f"/api/v1/runs/{run_id}/artifacts/model.pkl", content=pickled)
    response = api.post(
        "/api/v1/models/p/versions", json={"run_id": run_id, "artifact_path": "model.pkl"}
    )
    assert response.status_code == 422
    assert api.get("/api/v1/models/p/versions").json()["items"] == []
    assert api.get("/api/v1/models/p").json()["latest_version"] == 0


def test_unexpected_types_are_refused(api: TestClient, tmp_path: Path) -> None:
    api.post("/api/v1/models", json={"name": "evil"})
    content = skops_bytes(Gadget(), tmp_path)
    response = api.post("/api/v1/models/evil/versions/upload", files={"file": ("m.skops", content)})
    assert response.status_code == 422
    assert "Gadget" in response.json()["error"]["message"]


class Gadget:
    def predict(self, rows: object) -> object:
        return rows


def test_upload_needs_admin_and_valid_metadata(
    client: TestClient, auth, tmp_path: Path, jobs: InlineJobs
) -> None:
    client.post("/api/v1/models", json={"name": "u"}, headers=auth(Role.admin))
    content = skops_bytes(fit_pipeline(churn_frame()), tmp_path)
    files = {"file": ("m.skops", content)}
    denied = client.post(
        "/api/v1/models/u/versions/upload", files=files, headers=auth(Role.deployer)
    )
    assert denied.status_code == 403
    bad = client.post(
        "/api/v1/models/u/versions/upload",
        files=files,
        data={"metadata": '{"parent_version": "x"}'},
        headers=auth(Role.admin),
    )
    assert bad.status_code == 422
    ok = client.post(
        "/api/v1/models/u/versions/upload",
        files=files,
        data={"metadata": '{"description": "from a notebook"}'},
        headers=auth(Role.admin),
    )
    assert ok.status_code == 202, ok.text
    assert ok.json()["source"] == "upload" and ok.json()["run_id"] is None
    jobs.run()
    got = client.get("/api/v1/models/u/versions/1", headers=auth(Role.viewer)).json()
    # no training data: the names come from feature_names_in_, but "city" as a float does not
    # fit the OneHotEncoder, so the version is not ready (test_upload_form_fields_... below)
    assert got["status"] == "failed" and "inferred" in got["status_message"]


def test_tampered_artifact_fails_on_digest(
    api: TestClient, registry: Registry, jobs: InlineJobs, settings
) -> None:
    frame = churn_frame()
    created = registry.register("t", fit_pipeline(frame), None, signature={"inputs": _inputs()})
    stored = settings.resolved_artifact_root / created["artifact_uri"]
    stored.chmod(0o644)
    other = skops_bytes(fit_pipeline(churn_frame(seed=99)), stored.parent)
    stored.write_bytes(other)
    jobs.run()
    version = api.get("/api/v1/models/t/versions/1").json()
    assert version["status"] == "failed"
    assert "digest mismatch" in version["status_message"]


def test_errors_for_missing_things(api: TestClient, registry: Registry) -> None:
    assert (
        api.post(
            "/api/v1/models/none/versions", json={"run_id": 1, "artifact_path": "m"}
        ).status_code
        == 404
    )
    api.post("/api/v1/models", json={"name": "x"})
    assert api.post("/api/v1/models", json={"name": "x"}).status_code == 409
    assert api.post("/api/v1/models", json={"name": "bad name"}).status_code == 422
    run_id = registry.run_with_model(fit_pipeline(churn_frame()))
    missing = api.post(
        "/api/v1/models/x/versions", json={"run_id": run_id, "artifact_path": "nope.skops"}
    )
    assert missing.status_code == 404
    bad_dataset = api.post(
        "/api/v1/models/x/versions",
        json={"run_id": run_id, "artifact_path": "model.skops", "dataset_version_id": 987654},
    )
    assert bad_dataset.status_code == 422
    assert api.get("/api/v1/models/x/versions/7").status_code == 404
    assert api.get("/api/v1/models/x/versions/champion").status_code == 404


def test_finalize_is_idempotent(api: TestClient, registry: Registry, jobs: InlineJobs) -> None:
    from app.core.jobs import run_job

    registry.register("i", fit_pipeline(churn_frame()), None, signature={"inputs": _inputs()})
    message = jobs.queue[0]
    jobs.run()
    before = api.get("/api/v1/models/i/versions/1").json()
    run_job(jobs.ctx, message.task, message.payload)
    after = api.get("/api/v1/models/i/versions/1").json()
    assert before == after


def test_update_and_delete_model(
    api: TestClient, client: TestClient, auth, registry: Registry
) -> None:
    api.post("/api/v1/models", json={"name": "d", "description": "x"})
    patched = api.patch(
        "/api/v1/models/d", json={"description": "y", "tags": {"team": "risk"}}
    ).json()
    assert patched["description"] == "y" and patched["tags"] == {"team": "risk"}
    assert client.delete("/api/v1/models/d", headers=auth(Role.deployer)).status_code == 403
    assert api.delete("/api/v1/models/d").status_code == 204
    assert api.get("/api/v1/models/d").status_code == 404


def test_crafted_skops_files_are_a_422_never_a_500(api: TestClient, tmp_path: Path) -> None:
    """An editor's gadget (a constructor node naming pandas.read_pickle) and malformed
    schema.json files are refused at upload with the reason; nothing is registered."""
    from tests.ml.test_model_file_gadgets import call_node, crafted, json_node, with_protocol

    api.post("/api/v1/models", json={"name": "crafted"})
    gadget = with_protocol(call_node("pandas", "read_pickle", json_node("/tmp/payload.pkl")))
    cases = {
        "pandas.read_pickle": gadget,
        "protocol must be an integer": {k: v for k, v in gadget.items() if k != "protocol"},
        "not a JSON object": [gadget],
        "node kind Flywheel does not load": {**gadget, "__loader__": "NoSuchNode"},
    }
    for expected, schema in cases.items():
        content = crafted(tmp_path / "m.skops", schema).read_bytes()
        response = api.post(
            "/api/v1/models/crafted/versions/upload", files={"file": ("m.skops", content)}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "unsafe_model_file"
        assert expected in response.json()["error"]["message"]
    assert api.get("/api/v1/models/crafted/versions").json()["items"] == []


def _upload(api: TestClient, name: str, content: bytes, **data: str):  # type: ignore[no-untyped-def]
    return api.post(
        f"/api/v1/models/{name}/versions/upload", files={"file": ("m.skops", content)}, data=data
    )


def test_upload_form_fields_give_the_signature_from_the_dataset(
    api: TestClient, registry: Registry, jobs: InlineJobs, tmp_path: Path
) -> None:
    """dataset_version_id and target as plain form fields, not only inside `metadata`."""
    frame = churn_frame()
    dataset = registry.dataset_version(frame)
    api.post("/api/v1/models", json={"name": "form"})
    content = skops_bytes(fit_pipeline(frame), tmp_path)
    response = _upload(
        api, "form", content, dataset_version_id=str(dataset["id"]), target="churned"
    )
    assert response.status_code == 202, response.text
    assert response.json()["dataset_version_id"] == dataset["id"]
    assert response.json()["target"] == "churned"
    jobs.run()
    version = api.get("/api/v1/models/form/versions/1").json()
    assert version["status"] == "ready", version["status_message"]
    assert [(c["name"], c["type"]) for c in version["signature"]["inputs"]] == [
        ("age", "integer"),
        ("income", "float"),
        ("city", "string"),
    ]


def test_upload_refuses_unknown_and_doubled_form_fields(
    api: TestClient, registry: Registry, tmp_path: Path
) -> None:
    api.post("/api/v1/models", json={"name": "strict"})
    content = skops_bytes(fit_pipeline(churn_frame()), tmp_path)
    unknown = _upload(api, "strict", content, dataset_version_id="1", targt="churned")
    assert unknown.status_code == 422, unknown.text
    error = unknown.json()["error"]
    assert error["code"] == "unknown_form_fields" and "'targt'" in error["message"]
    assert error["details"]["unknown"] == ["targt"]
    doubled = _upload(api, "strict", content, target="churned", metadata='{"target": "y"}')
    assert doubled.status_code == 422 and "target" in doubled.json()["error"]["message"]
    misspelt = _upload(api, "strict", content, metadata='{"dataset_versionid": 1}')
    assert misspelt.status_code == 422 and "'dataset_versionid'" in misspelt.text
    wrong_type = _upload(api, "strict", content, dataset_version_id="first")
    assert wrong_type.status_code == 422
    assert api.get("/api/v1/models/strict/versions").json()["items"] == []


def test_a_signature_the_model_cannot_predict_on_is_never_ready(
    api: TestClient, jobs: InlineJobs, tmp_path: Path
) -> None:
    """A OneHotEncoder pipeline on a string column uploaded without its data: the names come
    from the model, the types cannot, so the version fails with the reason, visible through
    the API; a declared signature of the right types is checked and ready."""
    api.post("/api/v1/models", json={"name": "onehot"})
    content = skops_bytes(fit_pipeline(churn_frame()), tmp_path)
    assert _upload(api, "onehot", content).status_code == 202
    declared = [
        {"name": "age", "type": "integer"},
        {"name": "income", "type": "float"},
        {"name": "city", "type": "string"},
    ]
    metadata = json.dumps({"signature": {"inputs": declared}})
    assert _upload(api, "onehot", content, metadata=metadata).status_code == 202
    all_float = json.dumps({"signature": {"inputs": [dict(c, type="float") for c in declared]}})
    assert _upload(api, "onehot", content, metadata=all_float).status_code == 202
    jobs.run()
    inferred = api.get("/api/v1/models/onehot/versions/1").json()
    assert inferred["status"] == "failed", inferred["signature"]
    assert "every column a float" in inferred["status_message"]
    assert "dataset_version_id and target" in inferred["status_message"]
    assert api.get("/api/v1/models/onehot/versions/2").json()["status"] == "ready"
    wrong = api.get("/api/v1/models/onehot/versions/3").json()
    assert wrong["status"] == "failed" and "declared signature" in wrong["status_message"]
    assert api.get("/api/v1/models/onehot/versions/latest").json()["version"] == 2


def test_a_numeric_model_still_gets_its_signature_from_the_model(
    api: TestClient, jobs: InlineJobs, tmp_path: Path
) -> None:
    from sklearn.linear_model import LinearRegression

    frame = churn_frame()[["age", "income"]]
    model = LinearRegression().fit(frame, frame["age"] * 2.0)
    api.post("/api/v1/models", json={"name": "numeric"})
    assert _upload(api, "numeric", skops_bytes(model, tmp_path)).status_code == 202
    jobs.run()
    version = api.get("/api/v1/models/numeric/versions/1").json()
    assert version["status"] == "ready", version["status_message"]
    assert [c["type"] for c in version["signature"]["inputs"]] == ["float", "float"]


def test_rejected_model_uploads_leave_no_bytes_in_the_artifact_store(
    api: TestClient, settings, tmp_path: Path
) -> None:
    api.post("/api/v1/models", json={"name": "clean"})
    model = fit_pipeline(churn_frame())
    assert _upload(api, "clean", skops_bytes(model, tmp_path)).status_code == 202
    before = stored_files(settings.resolved_artifact_root)
    refused = {
        "pickle": pickle.dumps(model),
        "empty": b"",
        "binary": bytes(range(256)) * 64,
        "gadget": skops_bytes(Gadget(), tmp_path),
    }
    for what, content in refused.items():
        response = _upload(api, "clean", content)
        assert response.status_code == 422, (what, response.text)
        assert stored_files(settings.resolved_artifact_root) == before, what
    unknown_field = _upload(api, "clean", skops_bytes(model, tmp_path), colour="red")
    assert unknown_field.status_code == 422
    not_a_dataset = _upload(
        api,
        "clean",
        skops_bytes(fit_pipeline(churn_frame(seed=5)), tmp_path),
        dataset_version_id="999999",
    )
    assert not_a_dataset.status_code == 422, not_a_dataset.text
    assert stored_files(settings.resolved_artifact_root) == before
