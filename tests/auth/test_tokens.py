from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.models import ApiToken
from app.core.security import Role, hash_token

Auth = Callable[[Role], dict[str, str]]


def test_admin_creates_token_shown_once_and_stored_hashed(
    client: TestClient, auth: Auth, session: Session
) -> None:
    response = client.post(
        "/api/v1/tokens", json={"name": "ci", "role": "editor"}, headers=auth(Role.admin)
    )
    assert response.status_code == 201
    body = response.json()
    secret = body["token"]
    assert secret.startswith("fw_") and len(secret) > 40
    assert body["role"] == "editor" and body["hint"] == secret[:8]

    stored = session.scalar(select(ApiToken).where(ApiToken.id == body["id"]))
    assert stored is not None
    assert stored.secret_sha256 == hash_token(secret)
    assert secret not in {stored.secret_sha256, stored.name, stored.hint}

    listed = client.get("/api/v1/tokens", headers=auth(Role.admin)).json()["items"]
    assert all("token" not in item for item in listed)
    assert body["id"] in [item["id"] for item in listed]

    me = client.get("/api/v1/experiments", headers={"Authorization": f"Bearer {secret}"})
    assert me.status_code == 200


def test_revocation_is_effective_immediately(client: TestClient, auth: Auth) -> None:
    created = client.post(
        "/api/v1/tokens", json={"name": "temp", "role": "viewer"}, headers=auth(Role.admin)
    ).json()
    headers = {"Authorization": f"Bearer {created['token']}"}
    assert client.get("/api/v1/experiments", headers=headers).status_code == 200

    revoked = client.delete(f"/api/v1/tokens/{created['id']}", headers=auth(Role.admin))
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None

    response = client.get("/api/v1/experiments", headers=headers)
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]["message"]


def test_last_used_is_recorded(client: TestClient, auth: Auth, session: Session) -> None:
    created = client.post(
        "/api/v1/tokens", json={"name": "use", "role": "viewer"}, headers=auth(Role.admin)
    ).json()
    assert created["last_used_at"] is None
    before = datetime.now(UTC)
    client.get("/api/v1/experiments", headers={"Authorization": f"Bearer {created['token']}"})
    token = session.get(ApiToken, created["id"])
    assert token is not None and token.last_used_at is not None
    assert token.last_used_at >= before - timedelta(seconds=1)


def test_expired_token_is_refused(client: TestClient, auth: Auth) -> None:
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    response = client.post(
        "/api/v1/tokens",
        json={"name": "old", "role": "viewer", "expires_at": past},
        headers=auth(Role.admin),
    )
    assert response.status_code == 422
    assert "future" in response.json()["error"]["message"]


def test_a_token_cannot_revoke_itself(
    client: TestClient, auth: Auth, tokens: dict[Role, str]
) -> None:
    listed = client.get("/api/v1/tokens", headers=auth(Role.admin)).json()["items"]
    own = next(t for t in listed if t["name"] == "test-admin")
    response = client.delete(f"/api/v1/tokens/{own['id']}", headers=auth(Role.admin))
    assert response.status_code == 403


def test_unknown_role_and_missing_token_are_clear_errors(client: TestClient, auth: Auth) -> None:
    response = client.post(
        "/api/v1/tokens", json={"name": "x", "role": "root"}, headers=auth(Role.admin)
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "body.role"
    assert client.delete("/api/v1/tokens/999999", headers=auth(Role.admin)).status_code == 404


def test_token_list_pages(client: TestClient, auth: Auth) -> None:
    for i in range(3):
        client.post(
            "/api/v1/tokens", json={"name": f"p{i}", "role": "viewer"}, headers=auth(Role.admin)
        )
    seen: list[int] = []
    token = None
    while True:
        params: dict[str, str | int] = {"page_size": 2}
        if token:
            params["page_token"] = token
        page = client.get("/api/v1/tokens", params=params, headers=auth(Role.admin)).json()
        seen.extend(item["id"] for item in page["items"])
        token = page["next_page_token"]
        if token is None:
            break
    assert len(seen) == len(set(seen)) == 7
    bad = client.get("/api/v1/tokens", params={"page_token": "%%%"}, headers=auth(Role.admin))
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_page_token"
