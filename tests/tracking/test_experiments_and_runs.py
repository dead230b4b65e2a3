from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient


def make_experiment(api: TestClient, name: str = "churn") -> dict:
    response = api.post("/api/v1/experiments", json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()


def make_run(api: TestClient, experiment_id: int, **fields: object) -> dict:
    response = api.post("/api/v1/runs", json={"experiment_id": experiment_id, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def test_experiment_create_get_list_rename_archive(api: TestClient) -> None:
    exp = make_experiment(api)
    assert api.get(f"/api/v1/experiments/{exp['id']}").json()["name"] == "churn"

    duplicate = api.post("/api/v1/experiments", json={"name": "churn"})
    assert duplicate.status_code == 409
    assert "already exists" in duplicate.json()["error"]["message"]

    renamed = api.patch(f"/api/v1/experiments/{exp['id']}", json={"name": "churn-v2"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "churn-v2"

    archived = api.patch(f"/api/v1/experiments/{exp['id']}", json={"archived": True}).json()
    assert archived["archived_at"] is not None
    names = [e["name"] for e in api.get("/api/v1/experiments").json()["items"]]
    assert "churn-v2" not in names
    all_names = [
        e["name"] for e in api.get("/api/v1/experiments?include_archived=true").json()["items"]
    ]
    assert "churn-v2" in all_names

    refused = api.post("/api/v1/runs", json={"experiment_id": exp["id"]})
    assert refused.status_code == 409
    assert "archived" in refused.json()["error"]["message"]

    restored = api.patch(f"/api/v1/experiments/{exp['id']}", json={"archived": False}).json()
    assert restored["archived_at"] is None
    assert api.get("/api/v1/experiments/424242").status_code == 404


def test_rename_to_a_taken_name_is_409(api: TestClient) -> None:
    make_experiment(api, "a")
    b = make_experiment(api, "b")
    response = api.patch(f"/api/v1/experiments/{b['id']}", json={"name": "a"})
    assert response.status_code == 409


def test_run_lifecycle_and_duration(api: TestClient) -> None:
    exp = make_experiment(api)
    start = datetime.now(UTC) - timedelta(seconds=90)
    run = make_run(
        api,
        exp["id"],
        name="rf",
        params={"n_estimators": 100, "criterion": "gini", "lr": 0.1},
        tags={"team": "growth"},
        code_version={"repo": "https://example.com/a.git", "commit": "abc123", "branch": "main"},
        start_time=start.isoformat(),
    )
    assert run["status"] == "running"
    assert run["params"] == {"n_estimators": "100", "criterion": "gini", "lr": "0.1"}
    assert run["code_version"] == {
        "repo": "https://example.com/a.git",
        "commit": "abc123",
        "branch": "main",
        "dirty": False,
    }
    assert run["duration_ms"] is None

    end = start + timedelta(seconds=60)
    done = api.patch(
        f"/api/v1/runs/{run['id']}", json={"status": "finished", "end_time": end.isoformat()}
    )
    assert done.status_code == 200, done.text
    assert done.json()["duration_ms"] == 60_000
    assert done.json()["status"] == "finished"

    again = api.patch(f"/api/v1/runs/{run['id']}", json={"status": "failed"})
    assert again.status_code == 409
    assert "already finished" in again.json()["error"]["message"]


def test_end_before_start_is_refused(api: TestClient) -> None:
    exp = make_experiment(api)
    run = make_run(api, exp["id"])
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    response = api.patch(f"/api/v1/runs/{run['id']}", json={"status": "killed", "end_time": past})
    assert response.status_code == 422
    assert api.get(f"/api/v1/runs/{run['id']}").json()["status"] == "running"


def test_params_are_write_once(api: TestClient) -> None:
    exp = make_experiment(api)
    run = make_run(api, exp["id"], params={"lr": "0.1"})
    same = api.post(f"/api/v1/runs/{run['id']}/params", json={"params": {"lr": "0.1", "depth": 3}})
    assert same.status_code == 200
    assert same.json()["params"] == {"depth": "3", "lr": "0.1"}

    clash = api.post(f"/api/v1/runs/{run['id']}/params", json={"params": {"lr": "0.2", "x": "1"}})
    assert clash.status_code == 409
    assert clash.json()["error"]["details"] == {"lr": {"logged": "0.1", "new": "0.2"}}
    assert "x" not in api.get(f"/api/v1/runs/{run['id']}").json()["params"]


def test_tags_merge_and_can_change(api: TestClient) -> None:
    exp = make_experiment(api)
    run = make_run(api, exp["id"], tags={"a": "1"})
    updated = api.patch(f"/api/v1/runs/{run['id']}", json={"tags": {"a": "2", "b": "x"}}).json()
    assert updated["tags"] == {"a": "2", "b": "x"}


def test_dataset_inputs_must_exist(api: TestClient) -> None:
    exp = make_experiment(api)
    response = api.post(
        "/api/v1/runs", json={"experiment_id": exp["id"], "inputs": [{"dataset_version_id": 9999}]}
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"] == {"dataset_version_ids": [9999]}


def test_bad_input_gets_clear_errors(api: TestClient) -> None:
    response = api.post("/api/v1/runs", json={"experiment_id": "x"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["field"] == "body.experiment_id"
    assert api.post("/api/v1/runs", json={"experiment_id": 12345}).status_code == 404
    bad_key = api.post("/api/v1/runs", json={"experiment_id": 1, "params": {"a b$": "1"}})
    assert bad_key.status_code == 422
    assert api.get("/api/v1/runs/not-a-number").status_code == 422
    assert api.get("/api/v1/nowhere").json()["error"]["code"] == "not_found"


def test_list_runs_by_experiment(api: TestClient) -> None:
    a = make_experiment(api, "a")
    b = make_experiment(api, "b")
    for _ in range(3):
        make_run(api, a["id"])
    make_run(api, b["id"])
    page = api.get(f"/api/v1/runs?experiment_id={a['id']}&page_size=2").json()
    assert len(page["items"]) == 2 and page["next_page_token"]
    rest = api.get(
        f"/api/v1/runs?experiment_id={a['id']}&page_size=2&page_token={page['next_page_token']}"
    ).json()
    assert len(rest["items"]) == 1 and rest["next_page_token"] is None
