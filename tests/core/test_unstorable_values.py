"""Numbers beyond 64 bits and NUL characters are the request's fault: a 422 that says so
(on SQLite and PostgreSQL alike), and nothing is written."""

import pytest
from fastapi.testclient import TestClient

HUGE = 2**64


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("DELETE", f"/api/v1/tokens/{HUGE}", None),
        ("GET", f"/api/v1/runs?experiment_id={HUGE * 10**5}", None),
        ("GET", f"/api/v1/experiments/{HUGE}", None),
        ("POST", "/api/v1/runs", {"experiment_id": 2**70}),
    ],
)
def test_integers_beyond_the_database_range_are_a_422(
    api: TestClient, method: str, path: str, body: object
) -> None:
    response = api.request(method, path, json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "value_out_of_range"
    assert "9,223,372,036,854,775,807" in error["message"]


def test_a_nul_character_is_refused_or_stored_never_a_500(api: TestClient) -> None:
    created = api.post("/api/v1/experiments", json={"name": "a\u0000b"})
    looked_up = api.get("/api/v1/models/a%00b")
    # PostgreSQL cannot store NUL in text (422, nothing written); SQLite can (201 / 404)
    assert created.status_code in (201, 422), created.text
    assert looked_up.status_code in (404, 422), looked_up.text
    if created.status_code == 422:
        assert created.json()["error"]["code"] == "invalid_text"
        names = [e["name"] for e in api.get("/api/v1/experiments").json()["items"]]
        assert "a\u0000b" not in names


def test_a_nul_character_inside_json_tags_is_refused_or_stored_never_a_500(
    api: TestClient,
) -> None:
    """PostgreSQL refuses \\u0000 in JSONB with its own message (found by the fuzz test)."""
    created = api.post("/api/v1/models", json={"name": "tagged", "tags": {"k\u0000": "v\u0000"}})
    assert created.status_code in (201, 422), created.text
    if created.status_code == 422:
        assert created.json()["error"]["code"] == "invalid_text"
        assert api.get("/api/v1/models/tagged").status_code == 404
