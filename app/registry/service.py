"""Registered models, versions (numbered atomically), aliases and their history."""

import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.auth.service import Principal
from app.core.artifacts import ArtifactStore, StagedObject, StoredObject
from app.core.db import utcnow
from app.core.errors import Conflict, Forbidden, NotFound, Unprocessable
from app.core.outbox import enqueue
from app.core.pagination import PageParams, keyset_page
from app.core.security import Role
from app.datasets.models import DatasetVersion
from app.deployments.models import Deployment, Variant
from app.events import service as events
from app.events.types import EventType
from app.ml.model_files import ModelFileError, inspect_file
from app.registry.models import AliasMove, ModelAlias, ModelVersion, RegisteredModel, VersionStatus
from app.registry.schemas import (
    ModelCreate,
    ModelUpdate,
    VersionCreate,
    VersionOptions,
    VersionUpdate,
)
from app.tracking import service as tracking

PROTECTED_ALIASES = frozenset({"champion"})
RESERVED_ALIASES = frozenset({"latest"})
FINALIZE_JOB = "registry.finalize_version"
UPLOAD_FORM_FIELDS = ("file", "metadata", "dataset_version_id", "target")


def subject(model: RegisteredModel) -> str:
    return f"model:{model.name}"


# -- registered models ------------------------------------------------------------------------


def create_model(session: Session, data: ModelCreate) -> RegisteredModel:
    if session.scalar(select(RegisteredModel.id).where(RegisteredModel.name == data.name)):
        raise Conflict(f"a model named {data.name!r} already exists")
    model = RegisteredModel(
        name=data.name, description=data.description, tags=data.tags, aliases=[]
    )
    session.add(model)
    session.flush()
    return model


def get_model_or_raise(session: Session, name: str, *, for_update: bool = False) -> RegisteredModel:
    stmt = select(RegisteredModel).where(RegisteredModel.name == name)
    if for_update:
        stmt = stmt.with_for_update()
    model = session.scalar(stmt.options(selectinload(RegisteredModel.aliases)))
    if model is None:
        raise NotFound(f"model {name!r} does not exist; create it with POST /api/v1/models")
    return model


def list_models(session: Session, page: PageParams) -> tuple[Sequence[RegisteredModel], str | None]:
    stmt = select(RegisteredModel).options(selectinload(RegisteredModel.aliases))
    return keyset_page(session, stmt, RegisteredModel.id, page)


def update_model(session: Session, name: str, data: ModelUpdate) -> RegisteredModel:
    model = get_model_or_raise(session, name)
    if data.description is not None:
        model.description = data.description
    if data.tags is not None:
        model.tags = data.tags
    model.updated_at = utcnow()
    session.flush()
    return model


def delete_model(session: Session, name: str, *, by: Principal) -> None:
    model = get_model_or_raise(session, name, for_update=True)
    serving = session.scalars(
        select(Deployment.name)
        .join(Variant)
        .join(ModelVersion, ModelVersion.id == Variant.model_version_id)
        .where(ModelVersion.model_id == model.id)
        .distinct()
    ).all()
    if serving:
        raise Conflict(
            f"model {name!r} is deployed by {sorted(serving)}; "
            "change or delete those deployments first"
        )
    events.record(session, EventType.model_deleted, subject(model), {"model": name}, by.name)
    session.delete(model)
    session.flush()


def alias_numbers(session: Session, models: Sequence[RegisteredModel]) -> dict[int, int]:
    ids = {a.version_id for m in models for a in m.aliases}
    if not ids:
        return {}
    rows = session.execute(
        select(ModelVersion.id, ModelVersion.version).where(ModelVersion.id.in_(ids))
    )
    return {row.id: row.version for row in rows}


# -- versions ---------------------------------------------------------------------------------


def create_version_from_run(
    session: Session, store: ArtifactStore, name: str, data: VersionCreate, *, by: Principal
) -> ModelVersion:
    artifact = tracking.get_artifact_or_raise(session, data.run_id, data.artifact_path)
    stored = StoredObject(artifact.digest, artifact.size_bytes, store.uri_for(artifact.digest))
    return _create_version(
        session,
        name,
        stored,
        data,
        by=by,
        run_id=data.run_id,
        run_artifact_path=data.artifact_path,
        file=store.path_for_digest(artifact.digest),
    )


def upload_options(
    metadata: str,
    *,
    form_fields: Sequence[str],
    dataset_version_id: int | None,
    target: str | None,
) -> VersionOptions:
    """The upload's VersionOptions: the `metadata` JSON plus the fields also accepted on their
    own; a field this endpoint does not read is refused rather than silently dropped."""
    unknown = sorted(set(form_fields) - set(UPLOAD_FORM_FIELDS))
    if unknown:
        raise Unprocessable(
            f"unknown form fields {unknown}; send {list(UPLOAD_FORM_FIELDS)}, and any other "
            "version option inside the `metadata` JSON",
            code="unknown_form_fields",
            details={"unknown": unknown, "accepted": list(UPLOAD_FORM_FIELDS)},
        )
    try:
        options = VersionOptions.model_validate_json(metadata)
    except ValidationError as exc:
        raise Unprocessable(
            f"metadata is not valid VersionOptions JSON: {exc.errors()[0]['msg']}"
        ) from exc
    ignored = sorted(set(json.loads(metadata)) - set(VersionOptions.model_fields))
    if ignored:
        raise Unprocessable(
            f"unknown keys in metadata {ignored}; VersionOptions has "
            f"{sorted(VersionOptions.model_fields)}",
            code="unknown_form_fields",
        )
    fields = {"dataset_version_id": dataset_version_id, "target": target}
    given = {key: value for key, value in fields.items() if value is not None}
    twice = sorted(key for key in given if key in options.model_fields_set)
    if twice:
        raise Unprocessable(
            f"{twice} given both as form fields and inside metadata; send each once"
        )
    return options.model_copy(update=given)


def create_version_from_upload(
    session: Session,
    store: ArtifactStore,
    name: str,
    staged: StagedObject,
    data: VersionOptions,
    *,
    by: Principal,
) -> ModelVersion:
    """The staged file joins the store only once the version is created; a refused upload
    leaves no bytes behind."""
    try:
        stored = StoredObject(staged.digest, staged.size_bytes, store.uri_for(staged.digest))
        version = _create_version(
            session,
            name,
            stored,
            data,
            by=by,
            run_id=None,
            run_artifact_path=None,
            file=staged.path,
        )
        store.publish(staged)
        return version
    finally:
        store.discard(staged)


def _create_version(
    session: Session,
    name: str,
    stored: StoredObject,
    data: VersionOptions,
    *,
    by: Principal,
    run_id: int | None,
    run_artifact_path: str | None,
    file: Path,
) -> ModelVersion:
    """Cheap checks now (a 4xx that says what to fix); loading and profiling run as a job."""
    try:
        info = inspect_file(file)
    except ModelFileError as exc:
        raise Unprocessable(str(exc), code="unsafe_model_file") from exc
    if data.dataset_version_id is None and data.signature is None and data.target is not None:
        raise Unprocessable("target only makes sense with dataset_version_id")
    if data.dataset_version_id is not None:
        dataset_version = session.get(DatasetVersion, data.dataset_version_id)
        if dataset_version is None:
            raise Unprocessable(f"dataset version {data.dataset_version_id} does not exist")
        columns = [c["name"] for c in dataset_version.schema["columns"]]
        if data.target is not None and data.target not in columns:
            raise Unprocessable(f"target {data.target!r} is not a column of the dataset: {columns}")
    # The row lock serialises numbering per model: two concurrent creates never share a number.
    model = get_model_or_raise(session, name, for_update=True)
    parent_id = None
    if data.parent_version is not None:
        parent_id = get_version_or_raise(session, model, str(data.parent_version)).id
    metrics = data.metrics
    if metrics is None and run_id is not None:
        run = tracking.get_run_or_raise(session, run_id)
        metrics = {m.key: m.value for m in run.latest_metrics}
    model.last_version += 1
    version = ModelVersion(
        model_id=model.id,
        version=model.last_version,
        status=VersionStatus.pending,
        description=data.description,
        tags=data.tags,
        source="run" if run_id is not None else "upload",
        run_id=run_id,
        run_artifact_path=run_artifact_path,
        dataset_version_id=data.dataset_version_id,
        target=data.target,
        parent_version_id=parent_id,
        artifact_digest=stored.digest,
        artifact_uri=stored.uri,
        artifact_size_bytes=stored.size_bytes,
        artifact_types=info.types,
        signature={"inputs": [c.model_dump() for c in data.signature.inputs]}
        if data.signature
        else None,
        metrics=metrics or {},
        created_by=by.name,
    )
    session.add(version)
    session.flush()
    events.record(
        session,
        EventType.model_version_created,
        subject(model),
        {"model": model.name, "version": version.version, "status": version.status.value},
        by.name,
    )
    enqueue(session, FINALIZE_JOB, {"version_id": version.id})
    return version


def model_of(session: Session, version: ModelVersion) -> RegisteredModel:
    model = session.get(RegisteredModel, version.model_id)
    assert model is not None  # a version cannot outlive its model (foreign key)
    return model


def get_version_or_raise(session: Session, model: RegisteredModel, ref: str) -> ModelVersion:
    """A version by number (`3`), alias (`champion` or `@champion`) or `latest`."""
    ref = ref.removeprefix("@")
    stmt = select(ModelVersion).where(ModelVersion.model_id == model.id)
    if ref.isdigit():
        found = session.scalar(stmt.where(ModelVersion.version == int(ref)))
    elif ref == "latest":
        found = session.scalar(
            stmt.where(ModelVersion.status == VersionStatus.ready)
            .order_by(ModelVersion.version.desc())
            .limit(1)
        )
    else:
        alias = next((a for a in model.aliases if a.alias == ref), None)
        found = session.get(ModelVersion, alias.version_id) if alias else None
    if found is None:
        raise NotFound(f"model {model.name!r} has no version {ref!r}")
    return found


def resolve_ref(session: Session, ref: str) -> tuple[RegisteredModel, ModelVersion]:
    """`name@alias`, `name/3`, `name:3` or `models:/name@alias` to a model version."""
    text = ref.removeprefix("models:/")
    for separator in ("@", "/", ":"):
        if separator in text:
            name, _, version_ref = text.partition(separator)
            break
    else:
        raise Unprocessable(f"model reference {ref!r} needs a version: name@alias or name/3")
    model = get_model_or_raise(session, name)
    return model, get_version_or_raise(session, model, version_ref)


def list_versions(
    session: Session, name: str, page: PageParams
) -> tuple[RegisteredModel, Sequence[ModelVersion], str | None]:
    model = get_model_or_raise(session, name)
    stmt = select(ModelVersion).where(ModelVersion.model_id == model.id)
    items, token = keyset_page(session, stmt, ModelVersion.id, page)
    return model, items, token


def update_version(
    session: Session, name: str, ref: str, data: VersionUpdate
) -> tuple[RegisteredModel, ModelVersion]:
    model = get_model_or_raise(session, name)
    version = get_version_or_raise(session, model, ref)
    if data.description is not None:
        version.description = data.description
    if data.tags is not None:
        version.tags = data.tags
    version.updated_at = utcnow()
    session.flush()
    return model, version


def parent_number(session: Session, version: ModelVersion) -> int | None:
    if version.parent_version_id is None:
        return None
    return session.scalar(
        select(ModelVersion.version).where(ModelVersion.id == version.parent_version_id)
    )


def set_status(
    session: Session, version: ModelVersion, status: VersionStatus, message: str | None
) -> None:
    previous = version.status
    version.status = status
    version.status_message = message
    version.updated_at = utcnow()
    model = session.get(RegisteredModel, version.model_id)
    assert model is not None
    events.record(
        session,
        EventType.model_version_status_changed,
        subject(model),
        {
            "model": model.name,
            "version": version.version,
            "from": previous.value,
            "to": status.value,
            "message": message,
        },
    )


# -- aliases ----------------------------------------------------------------------------------


def set_alias(session: Session, name: str, alias: str, number: int, *, by: Principal) -> ModelAlias:
    check_alias(alias, by)
    model = get_model_or_raise(session, name, for_update=True)
    version = get_version_or_raise(session, model, str(number))
    if version.status != VersionStatus.ready:
        raise Conflict(
            f"version {number} is {version.status.value}; only a ready version can carry an alias"
        )
    current = next((a for a in model.aliases if a.alias == alias), None)
    previous = None
    if current is None:
        current = ModelAlias(model_id=model.id, alias=alias, version_id=version.id)
        model.aliases.append(current)
    elif current.version_id != version.id:
        previous = session.scalar(
            select(ModelVersion.version).where(ModelVersion.id == current.version_id)
        )
        current.version_id = version.id
    else:
        return current
    current.updated_at = utcnow()
    _record_move(session, model, alias, previous, number, by)
    session.flush()
    return current


def delete_alias(session: Session, name: str, alias: str, *, by: Principal) -> None:
    check_alias(alias, by)
    model = get_model_or_raise(session, name, for_update=True)
    current = next((a for a in model.aliases if a.alias == alias), None)
    if current is None:
        raise NotFound(f"model {name!r} has no alias {alias!r}")
    previous = session.scalar(
        select(ModelVersion.version).where(ModelVersion.id == current.version_id)
    )
    model.aliases.remove(current)
    _record_move(session, model, alias, previous, None, by)
    session.flush()


def check_alias(alias: str, by: Principal) -> None:
    if alias in RESERVED_ALIASES or alias.isdigit():
        raise Unprocessable(f"{alias!r} is reserved; pick another alias name")
    if alias in PROTECTED_ALIASES and not by.role.allows(Role.deployer):
        raise Forbidden(
            f"moving {alias!r} needs the deployer role; the token has {by.role.value}",
            details={"required_role": Role.deployer.value, "token_role": by.role.value},
        )


def _record_move(
    session: Session,
    model: RegisteredModel,
    alias: str,
    previous: int | None,
    new: int | None,
    by: Principal,
) -> None:
    session.add(
        AliasMove(
            model_id=model.id, alias=alias, from_version=previous, to_version=new, actor=by.name
        )
    )
    events.record(
        session,
        EventType.model_alias_moved,
        subject(model),
        {"model": model.name, "alias": alias, "from": previous, "to": new},
        by.name,
    )


def alias_history(
    session: Session, name: str, page: PageParams
) -> tuple[Sequence[AliasMove], str | None]:
    model = get_model_or_raise(session, name)
    stmt = select(AliasMove).where(AliasMove.model_id == model.id)
    return keyset_page(session, stmt, AliasMove.id, page)


def champion(session: Session, model: RegisteredModel) -> ModelVersion | None:
    alias = next((a for a in model.aliases if a.alias == "champion"), None)
    return session.get(ModelVersion, alias.version_id) if alias else None


def artifact_path(store: ArtifactStore, version: ModelVersion) -> Path:
    return store.path_for_digest(version.artifact_digest)
