"""Deployments as desired state. Serving (the gateway) reconciles towards it."""

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.auth.service import Principal
from app.core.db import utcnow
from app.core.errors import Conflict, Forbidden, NotFound, Unprocessable
from app.core.pagination import PageParams, keyset_page
from app.core.security import Role
from app.deployments.models import Deployment, Environment, Variant
from app.deployments.schemas import DeploymentCreate, DeploymentUpdate, VariantSpec
from app.events import service as events
from app.registry import service as registry
from app.registry.models import ModelVersion, VersionStatus


def _require_deployer(environment: Environment, by: Principal) -> None:
    if environment == Environment.production and not by.role.allows(Role.deployer):
        raise Forbidden(
            f"production deployments need the deployer role; the token has {by.role.value}",
            details={"required_role": Role.deployer.value, "token_role": by.role.value},
        )


def _variants(session: Session, specs: list[VariantSpec]) -> list[Variant]:
    """Resolve each model reference now, so the desired state names exact versions."""
    variants = []
    for index, spec in enumerate(specs):
        try:
            _, version = registry.resolve_ref(session, spec.model)
        except (NotFound, Unprocessable) as exc:
            raise Unprocessable(
                f"variants[{index}].model: {exc.message}",
                details={"loc": ["variants", index, "model"]},
            ) from exc
        if version.status != VersionStatus.ready:
            raise Unprocessable(
                f"variants[{index}].model: {spec.model} is {version.status.value}; "
                "deploy a ready version"
            )
        if not version.signature:
            raise Unprocessable(
                f"variants[{index}].model: {spec.model} has no signature to validate requests"
            )
        variants.append(
            Variant(
                name=spec.name,
                model_ref=spec.model,
                model_version_id=version.id,
                weight=spec.weight,
                mode=spec.mode,
            )
        )
    return variants


def create(session: Session, data: DeploymentCreate, *, by: Principal) -> Deployment:
    _require_deployer(data.environment, by)
    if session.scalar(select(Deployment.id).where(Deployment.name == data.name)):
        raise Conflict(f"a deployment named {data.name!r} already exists")
    deployment = Deployment(
        name=data.name,
        environment=data.environment,
        autoscaling=data.autoscaling.model_dump(mode="json"),
        rollout=data.rollout.model_dump(mode="json"),
        unit_key=data.unit_key,
        created_by=by.name,
        variants=_variants(session, data.variants),
    )
    session.add(deployment)
    session.flush()
    _record(session, deployment, "deployment.created", by)
    return deployment


def get_or_raise(session: Session, name: str, *, for_update: bool = False) -> Deployment:
    stmt = (
        select(Deployment).where(Deployment.name == name).options(selectinload(Deployment.variants))
    )
    deployment = session.scalar(stmt.with_for_update() if for_update else stmt)
    if deployment is None:
        raise NotFound(f"deployment {name!r} does not exist")
    return deployment


def list_deployments(session: Session, page: PageParams) -> tuple[Sequence[Deployment], str | None]:
    stmt = select(Deployment).options(selectinload(Deployment.variants))
    return keyset_page(session, stmt, Deployment.id, page)


def update(session: Session, name: str, data: DeploymentUpdate, *, by: Principal) -> Deployment:
    deployment = get_or_raise(session, name, for_update=True)
    _require_deployer(deployment.environment, by)
    if data.variants is not None:
        deployment.variants.clear()
        session.flush()
        deployment.variants.extend(_variants(session, data.variants))
    if data.autoscaling is not None:
        deployment.autoscaling = data.autoscaling.model_dump(mode="json")
    if data.rollout is not None:
        deployment.rollout = data.rollout.model_dump(mode="json")
    if "unit_key" in data.model_fields_set:
        deployment.unit_key = data.unit_key
    deployment.generation += 1
    deployment.updated_at = utcnow()
    session.flush()
    _record(session, deployment, "deployment.updated", by)
    return deployment


def delete(session: Session, name: str, *, by: Principal) -> None:
    deployment = get_or_raise(session, name, for_update=True)
    _require_deployer(deployment.environment, by)
    _record(session, deployment, "deployment.deleted", by)
    session.delete(deployment)
    session.flush()


def version_numbers(session: Session, deployments: Sequence[Deployment]) -> dict[int, int]:
    ids = {v.model_version_id for d in deployments for v in d.variants}
    if not ids:
        return {}
    rows = session.execute(
        select(ModelVersion.id, ModelVersion.version).where(ModelVersion.id.in_(ids))
    )
    return {row.id: row.version for row in rows}


def _record(session: Session, deployment: Deployment, type_: str, by: Principal) -> None:
    events.record(
        session,
        type_,
        f"deployment:{deployment.name}",
        {
            "deployment": deployment.name,
            "environment": deployment.environment.value,
            "generation": deployment.generation,
            "variants": [
                {"name": v.name, "model": v.model_ref, "weight": v.weight, "mode": v.mode.value}
                for v in deployment.variants
            ],
        },
        by.name,
    )
