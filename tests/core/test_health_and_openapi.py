from fastapi.testclient import TestClient

from app.core.errors import ErrorResponse


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz").json()
    assert ready["checks"] == {"database": "ok"}


def test_prometheus_metrics_count_requests_by_route_template(api: TestClient) -> None:
    api.get("/api/v1/experiments/424242")
    api.get("/api/v1/experiments/424243")
    text = api.get("/metrics").text
    assert "flywheel_http_request_duration_seconds_bucket" in text
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("flywheel_http_requests_total{")
        and 'route="/api/v1/experiments/{experiment_id}"' in line
        and 'status="404"' in line
    )
    assert float(line.rsplit(" ", 1)[1]) >= 2


def test_openapi_has_stable_operation_ids_tags_and_typed_responses(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operations = [
        (path, method, op) for path, item in spec["paths"].items() for method, op in item.items()
    ]
    ids = [op["operationId"] for _, _, op in operations]
    assert len(ids) == len(set(ids))
    assert {"create_run", "search_runs", "log_metrics", "create_dataset_version"} <= set(ids)
    for path, method, op in operations:
        assert op.get("tags"), (path, method)
        assert all(not i.endswith(("_get", "_post")) for i in [op["operationId"]])
    assert "ErrorResponse" in spec["components"]["schemas"]


def test_every_operation_documents_the_errors_the_shared_layers_send(client: TestClient) -> None:
    """The guard's 401 and 413, the role check's 403, parsing's 400 and 422, pagination's 400
    and the database's 503 are in the document, in the one error shape."""
    spec = client.get("/openapi.json").json()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            documented = op["responses"]
            names = {p["name"] for p in op.get("parameters", [])}
            expected = set()
            if op.get("security") or path.startswith("/api/v1/hooks/"):
                expected.add("401")
            if path.startswith("/api/v1/") and method in ("post", "put", "patch", "delete"):
                expected |= {"413", "401"}
            if "requestBody" in op:
                expected |= {"400", "422"}
            if "page_token" in names:
                expected.add("400")
            if "{" in path:
                expected.add("404")
            assert expected <= documented.keys(), (method, path, expected - documented.keys())
            for status in expected:
                schema = documented[status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "403" in spec["paths"]["/api/v1/tokens"]["post"]["responses"]
    assert "403" not in spec["paths"]["/api/v1/experiments"]["get"]["responses"]


def test_every_error_has_one_shape(api: TestClient) -> None:
    responses = [
        api.get("/api/v1/runs/1?page_size=abc"),
        api.get("/api/v1/runs/999999"),
        api.post(
            "/api/v1/experiments",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        ),
        api.delete("/api/v1/experiments"),
        api.get("/no/such/route"),
    ]
    for response in responses:
        assert 400 <= response.status_code < 500, response.text
        ErrorResponse.model_validate(response.json())
