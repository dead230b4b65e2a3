"""The desired state rendered for clusters: Kubernetes (Deployment + Service + HPA per
variant) or a KServe InferenceService with canaryTrafficPercent. Pure: data in, YAML out."""

from dataclasses import dataclass
from typing import Any, Literal

import yaml

Target = Literal["kubernetes", "kserve"]
PORT = 8080
INFLIGHT_METRIC = "flywheel_inflight_requests"


@dataclass(frozen=True)
class VariantImage:
    name: str
    mode: str
    weight: int
    model: str
    version: int
    image: str
    image_built: bool


def _labels(deployment: str, variant: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": deployment, "app.kubernetes.io/managed-by": "flywheel"}
    if variant is not None:
        labels["flywheel.dev/variant"] = variant
    return labels


def _container(variant: VariantImage) -> dict[str, Any]:
    probe = {"httpGet": {"path": "/v2/health/ready", "port": PORT}, "periodSeconds": 5}
    return {
        "name": "model",
        "image": variant.image,
        "args": ["python", "serve.py", "--host", "0.0.0.0", "--port", str(PORT)],  # noqa: S104
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "initialDelaySeconds": 10},
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
    }


def kubernetes(
    name: str, namespace: str, variants: list[VariantImage], autoscaling: dict[str, Any]
) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for variant in variants:
        full = f"{name}-{variant.name}"
        labels = _labels(name, variant.name)
        annotations = {
            "flywheel.dev/model": f"{variant.model}/{variant.version}",
            "flywheel.dev/mode": variant.mode,
            "flywheel.dev/weight": str(variant.weight),
            "flywheel.dev/image-built": str(variant.image_built).lower(),
        }
        documents.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": full,
                    "namespace": namespace,
                    "labels": labels,
                    "annotations": annotations,
                },
                "spec": {
                    "replicas": max(1, autoscaling["min_replicas"]),
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [_container(variant)]},
                    },
                },
            }
        )
        documents.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": full, "namespace": namespace, "labels": labels},
                "spec": {
                    "selector": labels,
                    "ports": [{"name": "http", "port": 80, "targetPort": PORT}],
                },
            }
        )
        documents.append(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": full, "namespace": namespace, "labels": labels},
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": full},
                    # an HPA cannot scale to zero: the floor is one replica
                    "minReplicas": max(1, autoscaling["min_replicas"]),
                    "maxReplicas": autoscaling["max_replicas"],
                    "metrics": [
                        {
                            "type": "Pods",
                            "pods": {
                                "metric": {"name": INFLIGHT_METRIC},
                                "target": {
                                    "type": "AverageValue",
                                    "averageValue": str(autoscaling["target_in_flight"]),
                                },
                            },
                        }
                    ],
                    "behavior": {
                        "scaleUp": {
                            "stabilizationWindowSeconds": int(
                                autoscaling["scale_up_stabilization_seconds"]
                            )
                        },
                        "scaleDown": {
                            "stabilizationWindowSeconds": int(
                                autoscaling["scale_down_stabilization_seconds"]
                            )
                        },
                    },
                },
            }
        )
    return documents


def kserve(
    name: str, namespace: str, variants: list[VariantImage], autoscaling: dict[str, Any]
) -> list[dict[str, Any]]:
    """KServe keeps the previous revision and sends canaryTrafficPercent to the new one: the
    live variant with the smaller weight is rendered as that canary."""
    live = sorted((v for v in variants if v.mode == "live"), key=lambda v: -v.weight)
    newest = live[-1]
    predictor: dict[str, Any] = {
        "minReplicas": autoscaling["min_replicas"],
        "maxReplicas": autoscaling["max_replicas"],
        "scaleMetric": "concurrency",
        "scaleTarget": max(1, round(autoscaling["target_in_flight"])),
        "containers": [{**_container(newest), "name": "kserve-container"}],
    }
    if len(live) > 1:
        predictor["canaryTrafficPercent"] = newest.weight
    annotations = {
        "flywheel.dev/variants": ",".join(
            f"{v.name}={v.model}/{v.version}:{v.weight}" for v in live
        ),
    }
    return [
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": _labels(name),
                "annotations": annotations,
            },
            "spec": {"predictor": predictor},
        }
    ]


def render(
    target: Target,
    name: str,
    namespace: str,
    variants: list[VariantImage],
    autoscaling: dict[str, Any],
) -> str:
    documents = (kubernetes if target == "kubernetes" else kserve)(
        name, namespace, variants, autoscaling
    )
    return yaml.safe_dump_all(documents, sort_keys=False)
