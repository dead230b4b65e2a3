from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response, status
from fastapi.responses import PlainTextResponse
from sqlalchemy.orm import Session

from app.auth.dependencies import Editor, Viewer
from app.core.config import API_PREFIX
from app.core.deps import AppSettings, DbSession
from app.core.errors import Conflict, ErrorResponse
from app.core.pagination import PageParams, page_params
from app.deployments import manifests, service
from app.deployments.models import Deployment
from app.deployments.schemas import (
    Autoscaling,
    DeploymentCreate,
    DeploymentPage,
    DeploymentRead,
    DeploymentUpdate,
    RolloutPolicy,
    VariantRead,
)
from app.registry.models import ModelVersion, RegisteredModel

errors: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
}
router = APIRouter(prefix=API_PREFIX + "/deployments", tags=["deployments"], responses=errors)
Page = Annotated[PageParams, Depends(page_params)]


def _read(deployment: Deployment, numbers: dict[int, int]) -> DeploymentRead:
    return DeploymentRead(
        id=deployment.id,
        name=deployment.name,
        environment=deployment.environment,
        variants=[
            VariantRead(
                name=v.name,
                model=v.model_ref,
                model_version=numbers[v.model_version_id],
                weight=v.weight,
                mode=v.mode,
            )
            for v in deployment.variants
        ],
        autoscaling=Autoscaling.model_validate(deployment.autoscaling),
        rollout=RolloutPolicy.model_validate(deployment.rollout),
        unit_key=deployment.unit_key,
        generation=deployment.generation,
        created_by=deployment.created_by,
        created_at=deployment.created_at,
        updated_at=deployment.updated_at,
    )


def _one(session: Session, deployment: Deployment) -> DeploymentRead:
    return _read(deployment, service.version_numbers(session, [deployment]))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DeploymentRead)
def create_deployment(
    body: DeploymentCreate, session: DbSession, principal: Editor
) -> DeploymentRead:
    """Desired state for serving: variants (model versions, weights, live or shadow),
    autoscaling and rollout policy. Production needs the deployer role."""
    return _one(session, service.create(session, body, by=principal))


@router.get("", response_model=DeploymentPage)
def list_deployments(session: DbSession, _: Viewer, page: Page) -> DeploymentPage:
    items, token = service.list_deployments(session, page)
    numbers = service.version_numbers(session, items)
    return DeploymentPage(items=[_read(d, numbers) for d in items], next_page_token=token)


@router.get("/{name}", response_model=DeploymentRead)
def get_deployment(name: str, session: DbSession, _: Viewer) -> DeploymentRead:
    return _one(session, service.get_or_raise(session, name))


@router.patch("/{name}", response_model=DeploymentRead)
def update_deployment(
    name: str, body: DeploymentUpdate, session: DbSession, principal: Editor
) -> DeploymentRead:
    return _one(session, service.update(session, name, body, by=principal))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_deployment(name: str, session: DbSession, principal: Editor) -> Response:
    service.delete(session, name, by=principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{name}/manifests", response_class=PlainTextResponse)
def get_deployment_manifests(
    name: str,
    session: DbSession,
    settings: AppSettings,
    _: Viewer,
    target: Literal["kubernetes", "kserve"] = "kubernetes",
    namespace: Annotated[str, Query(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")] = "default",
) -> PlainTextResponse:
    """The same desired state as Kubernetes objects or a KServe InferenceService (YAML)."""
    deployment = service.get_or_raise(session, name)
    images = [
        _image(session, settings.image_registry, v.name, v.mode.value, v.weight, v.model_version_id)
        for v in deployment.variants
    ]
    text = manifests.render(target, deployment.name, namespace, images, deployment.autoscaling)
    return PlainTextResponse(text, media_type="application/yaml")


def _image(
    session: Session, registry: str, name: str, mode: str, weight: int, version_id: int
) -> manifests.VariantImage:
    version = session.get(ModelVersion, version_id)
    assert version is not None
    model = session.get(RegisteredModel, version.model_id)
    assert model is not None
    image = (version.package or {}).get("image", {})
    if image.get("status") == "pushed":
        reference, built = image["reference"], True
    elif registry:
        reference, built = f"{registry.rstrip('/')}/{model.name}:{version.version}", False
    else:
        raise Conflict(
            f"{model.name} v{version.version} has no pushed image and FLYWHEEL_IMAGE_REGISTRY "
            "is unset; "
            "configure an image builder and registry, then package the version"
        )
    return manifests.VariantImage(name, mode, weight, model.name, version.version, reference, built)
