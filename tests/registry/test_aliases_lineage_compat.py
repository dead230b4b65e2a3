from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.security import Role
from app.events.models import Event
from app.registry import service
from tests.conftest import InlineJobs
from tests.registry.helpers import Registry, churn_frame, fit_pipeline


@pytest.fixture
def registry(api: TestClient, tmp_path: Path) -> Registry:
    return Registry(api, tmp_path)


@pytest.fixture
def two_versions(registry: Registry, jobs: InlineJobs) -> dict[str, int]:
    frame = churn_frame()
    dataset = registry.dataset_version(frame)
    registry.register("churn", fit_pipeline(frame), dataset["id"])
    registry.register("churn", fit_pipeline(churn_frame(seed=3)), dataset["id"])
    jobs.run()
    return {"dataset_version_id": dataset["id"]}


def test_alias_set_move_resolve_and_history(api: TestClient, two_versions: dict[str, int]) -> None:
    assert api.put("/api/v1/models/churn/aliases/champion", json={"version": 1}).status_code == 200
    assert api.get("/api/v1/models/churn/versions/champion").json()["version"] == 1
    assert api.get("/api/v1/models/churn/versions/@champion").json()["version"] == 1
    assert api.get("/api/v1/models/churn/versions/latest").json()["version"] == 2

    moved = api.put("/api/v1/models/churn/aliases/champion", json={"version": 2})
    assert moved.json()["version"] == 2
    api.put("/api/v1/models/churn/aliases/challenger", json={"version": 1})
    model = api.get("/api/v1/models/churn").json()
    assert model["aliases"] == {"champion": 2, "challenger": 1}
    assert api.get("/api/v1/models/churn/versions/1").json()["aliases"] == ["challenger"]

    assert api.delete("/api/v1/models/churn/aliases/challenger").status_code == 204
    moves = api.get("/api/v1/models/churn/alias-moves").json()["items"]
    assert [(m["alias"], m["from_version"], m["to_version"]) for m in moves] == [
        ("champion", None, 1),
        ("champion", 1, 2),
        ("challenger", None, 1),
        ("challenger", 1, None),
    ]
    assert all(m["actor"] == "test-admin" and m["created_at"] for m in moves)


def test_setting_the_same_alias_again_records_nothing(
    api: TestClient, two_versions: dict[str, int]
) -> None:
    api.put("/api/v1/models/churn/aliases/staging", json={"version": 1})
    api.put("/api/v1/models/churn/aliases/staging", json={"version": 1})
    assert len(api.get("/api/v1/models/churn/alias-moves").json()["items"]) == 1


def test_champion_needs_deployer_other_aliases_editor(
    client: TestClient, auth, two_versions: dict[str, int]
) -> None:
    denied = client.put(
        "/api/v1/models/churn/aliases/champion", json={"version": 1}, headers=auth(Role.editor)
    )
    assert denied.status_code == 403
    assert "deployer" in denied.json()["error"]["message"]
    ok = client.put(
        "/api/v1/models/churn/aliases/champion", json={"version": 1}, headers=auth(Role.deployer)
    )
    assert ok.status_code == 200
    staging = client.put(
        "/api/v1/models/churn/aliases/staging", json={"version": 2}, headers=auth(Role.editor)
    )
    assert staging.status_code == 200
    removal = client.delete("/api/v1/models/churn/aliases/champion", headers=auth(Role.editor))
    assert removal.status_code == 403


@pytest.mark.parametrize(
    ("alias", "status"),
    [("latest", 422), ("Champion", 422), ("7", 422), ("a b", 422), ("prod-eu_1", 200)],
)
def test_alias_names(
    api: TestClient, two_versions: dict[str, int], alias: str, status: int
) -> None:
    assert (
        api.put(f"/api/v1/models/churn/aliases/{alias}", json={"version": 1}).status_code == status
    )


def test_alias_on_pending_or_missing_version(api: TestClient, registry: Registry) -> None:
    registry.register("p", fit_pipeline(churn_frame()), None)
    pending = api.put("/api/v1/models/p/aliases/champion", json={"version": 1})
    assert pending.status_code == 409 and "pending" in pending.json()["error"]["message"]
    assert api.put("/api/v1/models/p/aliases/champion", json={"version": 9}).status_code == 404


def test_resolve_model_references(
    session: Session, two_versions: dict[str, int], api: TestClient
) -> None:
    api.put("/api/v1/models/churn/aliases/champion", json={"version": 2})
    for ref, number in [
        ("churn@champion", 2),
        ("churn/1", 1),
        ("models:/churn@champion", 2),
        ("churn:1", 1),
    ]:
        _, version = service.resolve_ref(session, ref)
        assert version.version == number, ref


def test_compatibility_verdicts_against_the_champion(
    api: TestClient, registry: Registry, jobs: InlineJobs
) -> None:
    frame = churn_frame()
    base = registry.dataset_version(frame, name="base")
    registry.register("c", fit_pipeline(frame), base["id"])
    jobs.run()
    api.put("/api/v1/models/c/aliases/champion", json={"version": 1})

    registry.register("c", fit_pipeline(churn_frame(seed=5)), base["id"])
    wider = churn_frame(extra=True)
    wider.loc[::2, "tenure"] = None  # an optional added column
    with_extra = registry.dataset_version(wider, name="wider")
    registry.register("c", fit_pipeline(wider), with_extra["id"])
    narrower = churn_frame().drop(columns=["city"])
    fewer = registry.dataset_version(narrower, name="narrower")
    registry.register("c", _fit_numeric(narrower), fewer["id"])
    jobs.run()

    verdicts = {
        v["version"]: v["compatibility"]
        for v in api.get("/api/v1/models/c/versions").json()["items"]
    }
    assert verdicts[1]["verdict"] == "no_champion"
    assert verdicts[2]["verdict"] == "identical" and verdicts[2]["against_version"] == 1
    assert verdicts[3]["verdict"] == "compatible"
    assert {"column": "tenure", "change": "added", "optional": True} in verdicts[3]["changes"]
    assert verdicts[4]["verdict"] == "breaking"
    assert {"column": "city", "change": "removed"} in verdicts[4]["changes"]


def _fit_numeric(frame):  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=500).fit(frame[["age", "income"]], frame["churned"])


def test_lineage_graph(api: TestClient, two_versions: dict[str, int]) -> None:
    api.put("/api/v1/models/churn/aliases/champion", json={"version": 2})
    version = api.get("/api/v1/models/churn/versions/2").json()
    graph = api.get("/api/v1/models/churn/versions/champion/lineage").json()
    nodes = {n["id"]: n for n in graph["nodes"]}
    dataset_node = f"dataset_version:{two_versions['dataset_version_id']}"
    run_node = f"run:{version['run_id']}"
    version_node = f"model_version:{version['id']}"
    assert set(nodes) == {dataset_node, run_node, version_node, "alias:churn@champion"}
    run = nodes[run_node]["data"]
    assert run["params"] == {"C": "1.0"} and run["metrics"] == {"auc": 0.87}
    assert run["code_version"]["commit"] == "abc123" and run["duration_ms"] is not None
    assert run["start_time"]
    assert nodes[dataset_node]["data"]["dataset"] == "churn-data"
    assert {(e["source"], e["target"], e["relation"]) for e in graph["edges"]} == {
        (dataset_node, run_node, "trained_on"),
        (run_node, version_node, "produced"),
        ("alias:churn@champion", version_node, "points_to"),
    }


def test_warm_start_parent_in_lineage(
    api: TestClient, registry: Registry, jobs: InlineJobs
) -> None:
    frame = churn_frame()
    registry.register("w", fit_pipeline(frame), None)
    registry.register("w", fit_pipeline(frame), None, parent_version=1)
    jobs.run()
    assert api.get("/api/v1/models/w/versions/2").json()["parent_version"] == 1
    edges = api.get("/api/v1/models/w/versions/2/lineage").json()["edges"]
    assert any(e["relation"] == "warm_started_from" for e in edges)


def test_registry_events_are_written_with_the_change(
    api: TestClient, two_versions: dict[str, int], session: Session
) -> None:
    api.put("/api/v1/models/churn/aliases/champion", json={"version": 1})
    types = session.scalars(
        select(Event.type).where(Event.subject == "model:churn").order_by(Event.id)
    ).all()
    assert types == [
        "model_version.created",
        "model_version.created",
        "model_version.status_changed",
        "model_version.status_changed",
        "model.alias_moved",
    ]
