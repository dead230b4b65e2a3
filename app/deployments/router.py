from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response, status
from fastapi.responses import PlainTextResponse
from sqlalchemy.orm import Session

from app.auth.dependencies import Editor, Viewer
from app.core.config import API_PREFIX
from app.core.deps import AppSettings, DbSession
from app.core.errors import Conflict, ErrorResponse
from app.core.pagination import PageParams, page_params
from app.deployments import experiments, manifests, rollouts, service
from app.deployments.models import Deployment, Rollout, RolloutState
from app.deployments.schemas import (
    Autoscaling,
    DeploymentCreate,
    DeploymentPage,
    DeploymentRead,
    DeploymentUpdate,
    ExperimentCreate,
    ExperimentPage,
    ExperimentRead,
    ExperimentResult,
    FeedbackAccepted,
    FeedbackBody,
    Guardrails,
    PromoteRequest,
    ReplicaList,
    ReplicaRead,
    RollbackRequest,
    RolloutPage,
    RolloutPolicy,
    RolloutRead,
    VariantRead,
)
from app.monitoring import service as monitoring
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
                mirror=v.mirror,
            )
            for v in deployment.variants
        ],
        autoscaling=Autoscaling.model_validate(deployment.autoscaling),
        rollout=RolloutPolicy.model_validate(deployment.rollout),
        unit_key=deployment.unit_key,
        log_sample_rate=deployment.log_sample_rate,
        public=deployment.public,
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


@router.get("/{name}/replicas", response_model=ReplicaList)
def list_deployment_replicas(name: str, session: DbSession, _: Viewer) -> ReplicaList:
    """Actual state as the gateways report it (rows older than 30 s are from a gateway that
    stopped reporting and are left out)."""
    deployment = service.get_or_raise(session, name)
    rows = service.replicas(session, deployment)
    return ReplicaList(
        items=[
            ReplicaRead(
                variant=r.variant,
                model_version=number,
                gateway=r.gateway,
                state="ready" if r.state == "ready" else "starting",
                pid=r.pid,
                port=r.port,
                started_at=r.started_at,
                ready_at=r.ready_at,
                cold_start_seconds=None
                if r.ready_at is None
                else round((r.ready_at - r.started_at).total_seconds(), 3),
                in_flight=r.in_flight,
                served=r.served,
                reported_at=r.reported_at,
            )
            for r, number in rows
        ]
    )


def _rollout(rollout: Rollout, deployment: str) -> RolloutRead:
    if rollout.state == RolloutState.running:
        percent = rollout.steps[rollout.step_index]
    else:
        percent = 100 if rollout.state == RolloutState.completed else 0
    return RolloutRead(
        id=rollout.id,
        deployment=deployment,
        strategy=rollout.strategy,
        state=rollout.state.value,
        baseline_variant=rollout.baseline_variant,
        baseline_model=rollout.baseline_ref,
        candidate_variant=rollout.candidate_variant,
        candidate_model=rollout.candidate_ref,
        steps=rollout.steps,
        step_index=rollout.step_index,
        percent=percent,
        step_started_at=rollout.step_started_at,
        bake_seconds=rollout.bake_seconds,
        guardrails=Guardrails.model_validate(rollout.guardrails),
        set_alias=rollout.set_alias,
        reason=rollout.reason,
        created_by=rollout.created_by,
        created_at=rollout.created_at,
        finished_at=rollout.finished_at,
        decisions=[
            {
                "at": d.at,
                "step_index": d.step_index,
                "percent": d.percent,
                "action": d.action,
                "reason": d.reason,
                "numbers": d.numbers,
            }
            for d in rollout.decisions
        ],
    )


@router.post("/{name}/promote", status_code=status.HTTP_201_CREATED, response_model=RolloutRead)
def promote_deployment(
    name: str, body: PromoteRequest, session: DbSession, principal: Editor
) -> RolloutRead:
    """Roll a version out by the deployment's policy: all at once, canary or linear steps,
    each baked and judged by guardrails; a breach rolls back by itself."""
    return _rollout(rollouts.promote(session, name, body, by=principal), name)


@router.post("/{name}/rollback", response_model=RolloutRead)
def rollback_deployment(
    name: str, session: DbSession, principal: Editor, body: RollbackRequest | None = None
) -> RolloutRead:
    """Stop the running rollout, or undo the last completed one."""
    reason = (body or RollbackRequest()).reason
    return _rollout(rollouts.rollback(session, name, reason, by=principal), name)


@router.get("/{name}/rollouts", response_model=RolloutPage)
def list_deployment_rollouts(name: str, session: DbSession, _: Viewer, page: Page) -> RolloutPage:
    deployment = service.get_or_raise(session, name)
    items, token = rollouts.list_rollouts(session, deployment, page)
    return RolloutPage(items=[_rollout(r, name) for r in items], next_page_token=token)


@router.get("/{name}/rollouts/{rollout_id}", response_model=RolloutRead)
def get_deployment_rollout(
    name: str, rollout_id: int, session: DbSession, _: Viewer
) -> RolloutRead:
    deployment = service.get_or_raise(session, name)
    return _rollout(rollouts.get_or_raise(session, deployment, rollout_id), name)


@router.post(
    "/{name}/experiments", status_code=status.HTTP_201_CREATED, response_model=ExperimentRead
)
def create_ab_test(
    name: str, body: ExperimentCreate, session: DbSession, principal: Editor
) -> ExperimentRead:
    """An A/B test between two live variants, judged on feedback (label or reward)."""
    return experiments.read(experiments.create(session, name, body, by=principal), name)


@router.get("/{name}/experiments", response_model=ExperimentPage)
def list_ab_tests(name: str, session: DbSession, _: Viewer, page: Page) -> ExperimentPage:
    deployment = service.get_or_raise(session, name)
    items, token = experiments.list_tests(session, deployment, page)
    return ExperimentPage(items=[experiments.read(t, name) for t in items], next_page_token=token)


@router.get("/{name}/experiments/{experiment_id}", response_model=ExperimentResult)
def get_ab_test(name: str, experiment_id: int, session: DbSession, _: Viewer) -> ExperimentResult:
    """Per variant samples and metric, the difference with an always-valid confidence
    interval and p-value, and a verdict: no winner before the sequential test says so."""
    deployment = service.get_or_raise(session, name)
    test = experiments.get_or_raise(session, deployment, experiment_id)
    return ExperimentResult.model_validate(experiments.result(session, deployment, test))


@router.post("/{name}/experiments/{experiment_id}/stop", response_model=ExperimentRead)
def stop_ab_test(name: str, experiment_id: int, session: DbSession, _: Editor) -> ExperimentRead:
    deployment = service.get_or_raise(session, name)
    return experiments.read(experiments.stop(session, deployment, experiment_id), name)


@router.post("/{name}/feedback", response_model=FeedbackAccepted)
def post_feedback(name: str, body: FeedbackBody, session: DbSession, _: Editor) -> FeedbackAccepted:
    """Ground truth for served requests, by request id: one item, or `{"items": [...]}`."""
    return monitoring.record_feedback(session, name, body)
