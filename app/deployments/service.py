"""Deployments as desired state. Serving (the gateway) reconciles towards it."""

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.auth.service import Principal
from app.core.db import utcnow
from app.core.errors import Conflict, Forbidden, NotFound, Unprocessable
from app.core.pagination import PageParams, keyset_page
from app.core.security import Role
from app.deployments.models import Deployment, Environment, Replica, Variant, VariantMode
from app.deployments.schemas import DeploymentCreate, DeploymentUpdate, VariantSpec
from app.events import service as events
from app.events.types import EventType
from app.registry import service as registry
from app.registry.models import ModelVersion, VersionStatus


def require_deployer(environment: Environment, by: Principal) -> None:
    if environment == Environment.production and not by.role.allows(Role.deployer):
        raise Forbidden(
            f"production deployments need the deployer role; the token has {by.role.value}",
            details={"required_role": Role.deployer.value, "token_role": by.role.value},
        )


def resolve_variant(session: Session, ref: str, loc: list[str | int]) -> Variant:
    """Resolve a model reference now, so the desired state names an exact version."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    try:
        _, version = registry.resolve_ref(session, ref)
    except (NotFound, Unprocessable) as exc:
        raise Unprocessable(f"{where}: {exc.message}", details={"loc": loc}) from exc
    if version.status != VersionStatus.ready:
        raise Unprocessable(f"{where}: {ref} is {version.status.value}; deploy a ready version")
    if not version.signature:
        raise Unprocessable(f"{where}: {ref} has no signature to validate requests")
    return Variant(model_ref=ref, model_version_id=version.id, weight=0, mode=VariantMode.live)


def _variants(session: Session, specs: list[VariantSpec]) -> list[Variant]:
    variants = []
    for index, spec in enumerate(specs):
        variant = resolve_variant(session, spec.model, ["variants", index, "model"])
        variant.name, variant.weight, variant.mode = spec.name, spec.weight, spec.mode
        variants.append(variant)
    return variants


def create(session: Session, data: DeploymentCreate, *, by: Principal) -> Deployment:
    require_deployer(data.environment, by)
    if session.scalar(select(Deployment.id).where(Deployment.name == data.name)):
        raise Conflict(f"a deployment named {data.name!r} already exists")
    deployment = Deployment(
        name=data.name,
        environment=data.environment,
        autoscaling=data.autoscaling.model_dump(mode="json"),
        rollout=data.rollout.model_dump(mode="json"),
        unit_key=data.unit_key,
        log_sample_rate=data.log_sample_rate,
        public=data.public,
        created_by=by.name,
        variants=_variants(session, data.variants),
    )
    session.add(deployment)
    session.flush()
    _record(session, deployment, EventType.deployment_created, by)
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
    require_deployer(deployment.environment, by)
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
    if data.log_sample_rate is not None:
        deployment.log_sample_rate = data.log_sample_rate
    if data.public is not None:
        deployment.public = data.public
    deployment.generation += 1
    deployment.updated_at = utcnow()
    session.flush()
    _record(session, deployment, EventType.deployment_updated, by)
    return deployment


def delete(session: Session, name: str, *, by: Principal) -> None:
    deployment = get_or_raise(session, name, for_update=True)
    require_deployer(deployment.environment, by)
    _record(session, deployment, EventType.deployment_deleted, by)
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


REPORT_FRESHNESS = timedelta(seconds=30)


def replicas(session: Session, deployment: Deployment) -> Sequence[tuple[Replica, int]]:
    stmt = (
        select(Replica, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == Replica.model_version_id)
        .where(
            Replica.deployment_id == deployment.id,
            Replica.reported_at >= utcnow() - REPORT_FRESHNESS,
        )
        .order_by(Replica.variant, Replica.started_at)
    )
    return [(row[0], row[1]) for row in session.execute(stmt)]


def _record(session: Session, deployment: Deployment, type_: EventType, by: Principal) -> None:
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
