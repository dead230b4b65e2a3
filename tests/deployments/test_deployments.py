from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from app.core.security import Role


def body(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "churn",
        "environment": "staging",
        "variants": [
            {"name": "blue", "model": "churn@champion", "weight": 90},
            {"name": "green", "model": "churn@challenger", "weight": 10},
            {"name": "mirror", "model": "churn/2", "weight": 0, "mode": "shadow"},
        ],
        "autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_in_flight": 4},
        "rollout": {"strategy": "canary", "canary_percent": 10, "bake_seconds": 60},
        "unit_key": "x-user-id",
    }
    return base | overrides


def test_create_resolves_aliases_to_versions_and_records_desired_state(
    api: TestClient, versions: None
) -> None:
    response = api.post("/api/v1/deployments", json=body())
    assert response.status_code == 201, response.text
    created = response.json()
    assert [
        (v["name"], v["model_version"], v["weight"], v["mode"]) for v in created["variants"]
    ] == [
        ("blue", 1, 90, "live"),
        ("green", 2, 10, "live"),
        ("mirror", 2, 0, "shadow"),
    ]
    assert created["generation"] == 1 and created["autoscaling"]["max_replicas"] == 3
    # moving the alias later does not move a deployment: it names exact versions
    api.put("/api/v1/models/churn/aliases/champion", json={"version": 2})
    assert api.get("/api/v1/deployments/churn").json()["variants"][0]["model_version"] == 1

    patched = api.patch(
        "/api/v1/deployments/churn",
        json={"variants": [{"name": "blue", "model": "churn@champion"}]},
    ).json()
    assert patched["generation"] == 2
    assert [(v["name"], v["model_version"], v["weight"]) for v in patched["variants"]] == [
        ("blue", 2, 100)
    ]
    assert api.delete("/api/v1/deployments/churn").status_code == 204
    assert api.get("/api/v1/deployments/churn").status_code == 404


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"variants": [{"name": "a", "model": "churn/1", "weight": 60}]}, "add up to 100"),
        (
            {"variants": [{"name": "a", "model": "churn/1", "weight": 0, "mode": "shadow"}]},
            "at least one variant must be live",
        ),
        (
            {
                "variants": [
                    {"name": "a", "model": "churn/1"},
                    {"name": "a", "model": "churn/2", "weight": 0, "mode": "shadow"},
                ]
            },
            "unique",
        ),
        ({"variants": [{"name": "a", "model": "churn/9"}]}, "no version"),
        ({"variants": [{"name": "a", "model": "nope@champion"}]}, "does not exist"),
        ({"variants": [{"name": "a", "model": "churn"}]}, "needs a version"),
        ({"autoscaling": {"min_replicas": 5, "max_replicas": 2}}, "min_replicas"),
        ({"autoscaling": {"min_replicas": 0, "max_replicas": 2}}, "scale_to_zero_after_seconds"),
        ({"rollout": {"strategy": "linear", "linear_steps": [50, 20]}}, "increasing"),
        ({"name": "Not_A_DNS_Label"}, "name"),
    ],
)
def test_invalid_deployments_are_422(
    api: TestClient, versions: None, change: dict, fragment: str
) -> None:
    response = api.post("/api/v1/deployments", json=body(**change))
    assert response.status_code == 422, response.text
    assert fragment in response.text
    assert api.get("/api/v1/deployments").json()["items"] == []


def test_production_needs_the_deployer_role(client: TestClient, auth, versions: None) -> None:
    production = body(environment="production")
    denied = client.post("/api/v1/deployments", json=production, headers=auth(Role.editor))
    assert denied.status_code == 403 and "deployer" in denied.json()["error"]["message"]
    assert (
        client.post("/api/v1/deployments", json=production, headers=auth(Role.deployer)).status_code
        == 201
    )
    change = {"autoscaling": {"min_replicas": 2, "max_replicas": 4}}
    assert (
        client.patch(
            "/api/v1/deployments/churn", json=change, headers=auth(Role.editor)
        ).status_code
        == 403
    )
    assert (
        client.post(
            "/api/v1/deployments", json=body(name="stage"), headers=auth(Role.editor)
        ).status_code
        == 201
    )


def test_kubernetes_and_kserve_manifests(api: TestClient, versions: None, settings, app) -> None:
    api.post("/api/v1/deployments", json=body())
    missing = api.get("/api/v1/deployments/churn/manifests")
    assert (
        missing.status_code == 409
        and "FLYWHEEL_IMAGE_REGISTRY" in missing.json()["error"]["message"]
    )
    app.state.settings = settings.model_copy(update={"image_registry": "registry.local/ml"})

    documents = list(
        yaml.safe_load_all(api.get("/api/v1/deployments/churn/manifests?namespace=ml").text)
    )
    kinds = [(d["kind"], d["metadata"]["name"]) for d in documents]
    assert kinds == [
        (kind, f"churn-{variant}")
        for variant in ("blue", "green", "mirror")
        for kind in ("Deployment", "Service", "HorizontalPodAutoscaler")
    ]
    deployment, service, hpa = documents[:3]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.local/ml/churn:1"
    assert deployment["metadata"]["namespace"] == "ml"
    assert (
        deployment["spec"]["selector"]["matchLabels"]
        == deployment["spec"]["template"]["metadata"]["labels"]
    )
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert hpa["spec"]["minReplicas"] == 1 and hpa["spec"]["maxReplicas"] == 3
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "4.0"
    assert deployment["metadata"]["annotations"]["flywheel.dev/weight"] == "90"

    [isvc] = list(
        yaml.safe_load_all(api.get("/api/v1/deployments/churn/manifests?target=kserve").text)
    )
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    predictor = isvc["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["containers"][0]["image"] == "registry.local/ml/churn:2"
    assert predictor["minReplicas"] == 1 and predictor["maxReplicas"] == 3
    assert api.get("/api/v1/deployments/churn/manifests?target=helm").status_code == 422


def test_a_deployed_model_cannot_be_deleted(api: TestClient, versions: None) -> None:
    api.post("/api/v1/deployments", json=body())
    refused = api.delete("/api/v1/models/churn")
    assert refused.status_code == 409 and "churn" in refused.json()["error"]["message"]
    api.delete("/api/v1/deployments/churn")
    assert api.delete("/api/v1/models/churn").status_code == 204


def test_a_deployment_is_private_unless_marked_public(api: TestClient, versions: None) -> None:
    created = api.post("/api/v1/deployments", json=body()).json()
    assert created["public"] is False
    patched = api.patch("/api/v1/deployments/churn", json={"public": True})
    assert patched.status_code == 200 and patched.json()["public"] is True
    assert patched.json()["generation"] == created["generation"] + 1  # gateways pick it up
    again = api.patch("/api/v1/deployments/churn", json={"log_sample_rate": 0.5}).json()
    assert again["public"] is True  # a patch that does not name it leaves it
    public = api.post("/api/v1/deployments", json=body(name="open", public=True)).json()
    assert public["public"] is True
