import hashlib
import io
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tests.datasets.files import constant_parquet, stored_files

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


def test_a_small_parquet_file_of_millions_of_rows_is_refused_with_the_setting(
    api: TestClient, dataset: str, settings
) -> None:
    content = constant_parquet(5_000_000)
    assert len(content) < 64 * 1024 and settings.max_dataset_rows < 5_000_000
    response = upload(api, dataset, content, filename="bomb.parquet")
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "dataset_too_large"
    assert "5,000,000 rows" in error["message"] and "FLYWHEEL_MAX_DATASET_ROWS" in error["message"]
    assert error["details"] == {"limit": "rows", "setting": "FLYWHEEL_MAX_DATASET_ROWS"}
    assert api.get(f"/api/v1/datasets/{dataset}/versions").json()["items"] == []


def test_decoded_size_limit_names_its_setting(
    client: TestClient, auth, settings, dataset: str
) -> None:  # type: ignore[no-untyped-def]
    settings.max_dataset_uncompressed_bytes = 1_000_000
    response = client.post(
        f"/api/v1/datasets/{dataset}/versions",
        files={"file": ("d.parquet", constant_parquet(200_000))},
        headers=auth(),
    )
    assert response.status_code == 413, response.text
    assert "FLYWHEEL_MAX_DATASET_UNCOMPRESSED_BYTES" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "content",
    [b"", b"a,b\n1,2\n3,4,5\n", b"\xff\xfe\x00garbage\x00\x01", b"PAR1not really parquet"],
    ids=["empty", "malformed-csv", "binary", "bad-parquet"],
)
def test_rejected_uploads_leave_no_bytes_in_the_artifact_store(
    api: TestClient, dataset: str, settings, content: bytes
) -> None:
    upload(api, dataset, CSV)  # the store exists and holds something already
    before = stored_files(settings.resolved_artifact_root)
    response = upload(api, dataset, content)
    assert response.status_code == 422, response.text
    assert stored_files(settings.resolved_artifact_root) == before


def test_rejected_uploads_by_uri_leave_no_copy(api: TestClient, dataset: str, settings) -> None:
    landing = settings.resolved_artifact_root / "landing"
    landing.mkdir(parents=True)
    (landing / "broken.csv").write_bytes(b"a,b\n1,2\n3,4,5\n")
    (landing / "bomb.parquet").write_bytes(constant_parquet(5_000_000))
    before = stored_files(settings.resolved_artifact_root)
    for uri, code in (("landing/broken.csv", 422), ("landing/bomb.parquet", 413)):
        response = api.post(f"/api/v1/datasets/{dataset}/versions", data={"uri": uri})
        assert response.status_code == code, response.text
    assert stored_files(settings.resolved_artifact_root) == before
