import pytest
from fastapi.testclient import TestClient

from tests.tracking.test_experiments_and_runs import make_experiment, make_run


@pytest.fixture
def runs(api: TestClient) -> dict[str, int]:
    exp = make_experiment(api)
    other = make_experiment(api, "other")
    specs = {
        "rf-x": ({"model": "rf", "p1": "x"}, {"m0": 0.9, "m1": 0.3}, {"team": "growth"}),
        "rf-y": ({"model": "rf", "p1": "y"}, {"m0": 0.7, "m1": 0.8}, {"team": "risk"}),
        "lr-x": ({"model": "lr", "p1": "x"}, {"m0": 0.6, "m1": 0.9}, {}),
        "lr-x-low": ({"model": "lr", "p1": "x"}, {"m0": 0.2, "m1": 0.95}, {}),
        "nometrics": ({"model": "svm", "p1": "x"}, {}, {}),
    }
    ids = {}
    for name, (params, metrics, tags) in specs.items():
        run = make_run(api, exp["id"], name=name, params=params, tags=tags)
        if metrics:
            points = [{"key": k, "value": v} for k, v in metrics.items()]
            api.post(f"/api/v1/runs/{run['id']}/metrics", json={"metrics": points})
        ids[name] = run["id"]
    api.patch(f"/api/v1/runs/{ids['rf-x']}", json={"status": "finished"})
    ids["elsewhere"] = make_run(api, other["id"], name="elsewhere", params={"p1": "x"})["id"]
    ids["experiment"] = exp["id"]
    return ids


def search(api: TestClient, experiment: int | None = None, **body: object) -> list[str]:
    if experiment is not None:
        body["experiment_ids"] = [experiment]
    response = api.post("/api/v1/runs/search", json=body)
    assert response.status_code == 200, response.text
    return [r["name"] for r in response.json()["items"]]


def test_benchmark_query_shape(api: TestClient, runs: dict[str, int]) -> None:
    names = search(
        api,
        runs["experiment"],
        filter="metrics.m0 > 0.5 and params.p1 = 'x'",
        order_by=["metrics.m1 DESC"],
    )
    assert names == ["lr-x", "rf-x"]


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ("params.model = 'rf'", {"rf-x", "rf-y"}),
        ("params.model != 'rf'", {"lr-x", "lr-x-low", "nometrics"}),
        ("params.model IN ('lr', 'svm')", {"lr-x", "lr-x-low", "nometrics"}),
        ("params.model NOT IN ('lr', 'svm')", {"rf-x", "rf-y"}),
        ("params.model LIKE 'r%'", {"rf-x", "rf-y"}),
        ("params.model LIKE 'R%'", set()),
        ("params.model ILIKE 'R%'", {"rf-x", "rf-y"}),
        ("metrics.m0 >= 0.7", {"rf-x", "rf-y"}),
        ("metrics.m0 < 0.6 OR metrics.m1 = 0.8", {"lr-x-low", "rf-y"}),
        ("metrics.m0 IS NULL", {"nometrics"}),
        (
            "tags.team = 'growth' OR (params.model = 'lr' AND metrics.m1 > 0.92)",
            {"rf-x", "lr-x-low"},
        ),
        ("tags.team IS NOT NULL", {"rf-x", "rf-y"}),
        ("status = 'finished'", {"rf-x"}),
        ("status = 'FINISHED'", {"rf-x"}),
        ("attributes.name LIKE 'lr-%'", {"lr-x", "lr-x-low"}),
        ("name = 'rf-y' and start_time > '2000-01-01'", {"rf-y"}),
        ("duration_ms IS NULL and name = 'rf-x'", set()),
    ],
)
def test_filters(api: TestClient, runs: dict[str, int], flt: str, expected: set[str]) -> None:
    assert set(search(api, runs["experiment"], filter=flt)) == expected


def test_experiment_ids_scope_the_search(api: TestClient, runs: dict[str, int]) -> None:
    assert "elsewhere" in search(api, filter="params.p1 = 'x'")
    assert "elsewhere" not in search(api, runs["experiment"], filter="params.p1 = 'x'")


def test_order_by_attributes_params_and_missing_values_last(
    api: TestClient, runs: dict[str, int]
) -> None:
    by_name = search(api, runs["experiment"], order_by=["name ASC"])
    assert by_name == sorted(by_name)
    by_metric = search(api, runs["experiment"], order_by=["metrics.m0 ASC"])
    assert by_metric[-1] == "nometrics"
    assert by_metric[:4] == ["lr-x-low", "lr-x", "rf-y", "rf-x"]
    by_two = search(api, runs["experiment"], order_by=["params.model DESC", "metrics.m1 ASC"])
    assert by_two == ["nometrics", "rf-x", "rf-y", "lr-x", "lr-x-low"]


def test_pages_cover_everything_once(api: TestClient, runs: dict[str, int]) -> None:
    seen: list[str] = []
    token = None
    while True:
        body = {
            "experiment_ids": [runs["experiment"]],
            "page_size": 2,
            "order_by": ["metrics.m1 DESC"],
        }
        if token:
            body["page_token"] = token
        page = api.post("/api/v1/runs/search", json=body).json()
        seen.extend(r["name"] for r in page["items"])
        token = page["next_page_token"]
        if not token:
            break
    assert seen == ["lr-x-low", "lr-x", "rf-y", "rf-x", "nometrics"]
    reused = api.post(
        "/api/v1/runs/search",
        json={"filter": "params.p1 = 'x'", "page_token": page_token_of(api, runs)},
    )
    assert reused.status_code == 400
    assert "different query" in reused.json()["error"]["message"]


def page_token_of(api: TestClient, runs: dict[str, int]) -> str:
    body = {"experiment_ids": [runs["experiment"]], "page_size": 1}
    token: str = api.post("/api/v1/runs/search", json=body).json()["next_page_token"]
    return token


@pytest.mark.parametrize(
    ("flt", "position", "fragment"),
    [
        ("metrics.m0 > ", 13, "expected a value"),
        ("metrics.m0 > 0.5 AND", 20, "expected an identifier"),
        ("(params.a = 'b'", 15, "')'"),
        ("params.a == 'b'", 9, "unknown operator"),
        ("params.a = 'b", 11, "unterminated string"),
        ("metrics.m0 = 'x'", 0, "numeric"),
        ("params.lr = 0.1", 0, "'0.1'"),
        ("nonsense = 1", 0, "attribute"),
        ("foo.bar = 'x'", 0, "unknown prefix"),
    ],
)
def test_malformed_filters_point_at_the_position(
    api: TestClient, flt: str, position: int, fragment: str
) -> None:
    response = api.post("/api/v1/runs/search", json={"filter": flt})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_filter"
    assert error["details"]["position"] == position, error
    assert fragment in error["message"]


def test_malformed_order_by(api: TestClient) -> None:
    response = api.post("/api/v1/runs/search", json={"order_by": ["metrics.m1 SIDEWAYS"]})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_filter"
