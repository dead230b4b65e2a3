import hashlib
import io
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

CSV = b"age,income,city,churned\n34,52000.5,Paris,true\n51,61000,Lyon,false\n29,,Paris,true\n"


@pytest.fixture
def dataset(api: TestClient) -> str:
    response = api.post("/api/v1/datasets", json={"name": "churn", "description": "customers"})
    assert response.status_code == 201, response.text
    return "churn"


def upload(api: TestClient, name: str, content: bytes, filename: str = "data.csv"):  # type: ignore[no-untyped-def]
    return api.post(
        f"/api/v1/datasets/{name}/versions", files={"file": (filename, content, "text/csv")}
    )


def test_csv_version_has_digest_rows_schema_profile(api: TestClient, dataset: str) -> None:
    response = upload(api, dataset, CSV)
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["version"] == 1 and version["created"] is True
    assert version["digest"] == hashlib.sha256(CSV).hexdigest()
    assert version["rows"] == 3 and version["format"] == "csv"
    assert [(c["name"], c["type"]) for c in version["schema"]] == [
        ("age", "integer"),
        ("income", "float"),
        ("city", "string"),
        ("churned", "boolean"),
    ]
    assert version["schema"][1]["nullable"] is True
    income = version["profile"]["columns"]["income"]
    assert income["kind"] == "numeric" and income["nulls"] == 1
    assert income["min"] == 52000.5 and income["max"] == 61000
    assert version["profile"]["columns"]["city"]["counts"] == {"Paris": 2, "Lyon": 1}

    got = api.get(f"/api/v1/datasets/{dataset}/versions/1").json()
    assert got["digest"] == version["digest"] and got["created"] is False


def test_same_content_is_the_same_version(api: TestClient, dataset: str, settings) -> None:
    first = upload(api, dataset, CSV).json()
    again = upload(api, dataset, CSV, filename="renamed.csv")
    assert again.status_code == 200
    assert again.json()["version"] == first["version"] and again.json()["created"] is False
    different = upload(api, dataset, CSV + b"40,1000,Nice,false\n")
    assert different.status_code == 201 and different.json()["version"] == 2
    listed = api.get(f"/api/v1/datasets/{dataset}/versions").json()["items"]
    assert [v["version"] for v in listed] == [1, 2]
    objects = [p for p in (settings.resolved_artifact_root / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 2


def test_parquet_upload(api: TestClient, dataset: str) -> None:
    frame = pd.DataFrame({"x": [1.5, 2.5, None], "label": ["a", "b", "a"]})
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    response = upload(api, dataset, buffer.getvalue(), filename="data.bin")
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "parquet"
    assert response.json()["rows"] == 3


def test_uri_on_the_artifact_store(api: TestClient, dataset: str, settings) -> None:
    landing = settings.resolved_artifact_root / "landing"
    landing.mkdir(parents=True)
    (landing / "day1.csv").write_bytes(CSV)
    response = api.post(f"/api/v1/datasets/{dataset}/versions", data={"uri": "landing/day1.csv"})
    assert response.status_code == 201, response.text
    assert response.json()["source_uri"] == "landing/day1.csv"
    assert response.json()["digest"] == hashlib.sha256(CSV).hexdigest()
    escape = api.post(f"/api/v1/datasets/{dataset}/versions", data={"uri": "../../etc/passwd"})
    assert escape.status_code == 422
    missing = api.post(f"/api/v1/datasets/{dataset}/versions", data={"uri": "landing/none.csv"})
    assert missing.status_code == 422


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "empty"),
        (b"a,b\n1,2\n3,4,5\n", "line"),
        (b"a,a\n1,2\n", "duplicate"),
        (b"\xff\xfe\x00garbage\x00\x01", "UTF-8"),
        (b"PAR1not really parquet", "arquet"),
        (b"a,b\n", "no data rows"),
    ],
)
def test_malformed_files_are_422_and_create_nothing(
    api: TestClient, dataset: str, content: bytes, fragment: str
) -> None:
    response = upload(api, dataset, content)
    assert response.status_code == 422, response.text
    assert fragment.lower() in response.json()["error"]["message"].lower()
    assert api.get(f"/api/v1/datasets/{dataset}/versions").json()["items"] == []


def test_exactly_one_source_and_known_dataset(api: TestClient, dataset: str) -> None:
    neither = api.post(f"/api/v1/datasets/{dataset}/versions", data={})
    assert neither.status_code == 422
    assert upload(api, "nope", CSV).status_code == 404
    assert api.post("/api/v1/datasets", json={"name": "churn"}).status_code == 409
    assert api.post("/api/v1/datasets", json={"name": "../x"}).status_code == 422


def test_run_inputs_link_dataset_versions(api: TestClient, dataset: str, tmp_path: Path) -> None:
    version = upload(api, dataset, CSV).json()
    exp = api.post("/api/v1/experiments", json={"name": "e"}).json()
    run = api.post(
        "/api/v1/runs",
        json={"experiment_id": exp["id"], "inputs": [{"dataset_version_id": version["id"]}]},
    ).json()
    assert run["inputs"] == [{"dataset_version_id": version["id"], "context": "training"}]
