from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile, status
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.auth.dependencies import Admin, Editor, Viewer
from app.core.artifacts import CHUNK, ArtifactStore
from app.core.config import API_PREFIX
from app.core.deps import AppSettings, DbSession
from app.core.errors import ErrorResponse, NotFound, Unprocessable
from app.core.pagination import PageParams, page_params
from app.registry import lineage as lineage_service
from app.registry import packaging, service
from app.registry.models import ModelVersion, RegisteredModel
from app.registry.schemas import (
    ALIAS_PATTERN,
    AliasMovePage,
    AliasMoveRead,
    AliasRead,
    AliasSet,
    Lineage,
    ModelCreate,
    ModelPage,
    ModelRead,
    ModelUpdate,
    VersionCreate,
    VersionPage,
    VersionRead,
    VersionUpdate,
    model_read,
    version_read,
)

router = APIRouter(
    prefix=API_PREFIX + "/models",
    tags=["registry"],
    responses={
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
    },
)
Page = Annotated[PageParams, Depends(page_params)]
VersionRef = Annotated[str, "a version number, an alias (champion or @champion) or latest"]


def _model_read(session: Session, model: RegisteredModel) -> ModelRead:
    return model_read(model, service.alias_numbers(session, [model]))


def _version_read(session: Session, model: RegisteredModel, version: ModelVersion) -> VersionRead:
    return version_read(version, model, service.parent_number(session, version))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelRead)
def create_model(body: ModelCreate, session: DbSession, _: Editor) -> ModelRead:
    return _model_read(session, service.create_model(session, body))


@router.get("", response_model=ModelPage)
def list_models(session: DbSession, _: Viewer, page: Page) -> ModelPage:
    items, token = service.list_models(session, page)
    numbers = service.alias_numbers(session, items)
    return ModelPage(items=[model_read(m, numbers) for m in items], next_page_token=token)


@router.get("/{name}", response_model=ModelRead)
def get_model(name: str, session: DbSession, _: Viewer) -> ModelRead:
    return _model_read(session, service.get_model_or_raise(session, name))


@router.patch("/{name}", response_model=ModelRead)
def update_model(name: str, body: ModelUpdate, session: DbSession, _: Editor) -> ModelRead:
    return _model_read(session, service.update_model(session, name, body))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_model(name: str, session: DbSession, principal: Admin) -> Response:
    """Delete a model with all its versions and aliases."""
    service.delete_model(session, name, by=principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/versions", status_code=status.HTTP_202_ACCEPTED, response_model=VersionRead)
def create_model_version(
    name: str, body: VersionCreate, request: Request, session: DbSession, principal: Editor
) -> VersionRead:
    """Register a run's skops artifact. The version starts `pending`; a job verifies the file,
    infers the signature, samples background rows and moves it to `ready` or `failed`."""
    store: ArtifactStore = request.app.state.artifacts
    version = service.create_version_from_run(session, store, name, body, by=principal)
    return _version_read(session, version.model, version)


@router.post(
    "/{name}/versions/upload",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=VersionRead,
    responses={413: {"model": ErrorResponse}},
)
async def upload_model_version(
    name: str,
    request: Request,
    session: DbSession,
    settings: AppSettings,
    principal: Admin,
    file: Annotated[UploadFile, File(description="A model saved with skops.io.dump.")],
    metadata: Annotated[str, Form(description="VersionOptions as JSON.")] = "{}",
    dataset_version_id: Annotated[
        int | None, Form(description="Training data, as in metadata (either place, not both).")
    ] = None,
    target: Annotated[
        str | None,
        Form(max_length=250, description="Label column, as in metadata (either place)."),
    ] = None,
) -> VersionRead:
    """Register an uploaded skops file (admin only). Pickle and joblib files are refused.

    Form fields: `file`, `metadata` (VersionOptions as JSON), and `dataset_version_id` and
    `target` on their own; any other field is refused."""
    form = await request.form()
    options = service.upload_options(
        metadata,
        form_fields=list(form.keys()),
        dataset_version_id=dataset_version_id,
        target=target,
    )
    await run_in_threadpool(service.get_model_or_raise, session, name)
    store: ArtifactStore = request.app.state.artifacts
    staged = await store.stage_stream(_chunks(file), max_bytes=settings.max_upload_bytes)
    version = await run_in_threadpool(
        service.create_version_from_upload, session, store, name, staged, options, by=principal
    )
    return _version_read(session, version.model, version)


async def _chunks(upload: UploadFile):  # type: ignore[no-untyped-def]
    while chunk := await upload.read(CHUNK):
        yield chunk


@router.get("/{name}/versions", response_model=VersionPage)
def list_model_versions(name: str, session: DbSession, _: Viewer, page: Page) -> VersionPage:
    model, items, token = service.list_versions(session, name, page)
    return VersionPage(
        items=[_version_read(session, model, v) for v in items], next_page_token=token
    )


@router.get("/{name}/versions/{version}", response_model=VersionRead)
def get_model_version(name: str, version: VersionRef, session: DbSession, _: Viewer) -> VersionRead:
    """`version` is a number, an alias (`champion` or `@champion`) or `latest`."""
    model = service.get_model_or_raise(session, name)
    return _version_read(session, model, service.get_version_or_raise(session, model, version))


@router.patch("/{name}/versions/{version}", response_model=VersionRead)
def update_model_version(
    name: str, version: VersionRef, body: VersionUpdate, session: DbSession, _: Editor
) -> VersionRead:
    model, found = service.update_version(session, name, version, body)
    return _version_read(session, model, found)


@router.get("/{name}/versions/{version}/lineage", response_model=Lineage)
def get_model_version_lineage(
    name: str, version: VersionRef, session: DbSession, _: Viewer
) -> Lineage:
    """Datasets -> run (params, metrics, code version, timing) -> version -> aliases."""
    model = service.get_model_or_raise(session, name)
    return lineage_service.lineage(
        session, model, service.get_version_or_raise(session, model, version)
    )


@router.post(
    "/{name}/versions/{version}/package",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=VersionRead,
    responses={200: {"model": VersionRead}},
)
def package_model_version(
    name: str,
    version: VersionRef,
    response: Response,
    session: DbSession,
    principal: Editor,
    rebuild: bool = False,
) -> VersionRead:
    """Build the serving bundle (and image, where configured) as a job; 200 if it exists."""
    model = service.get_model_or_raise(session, name)
    found = service.get_version_or_raise(session, model, version)
    if not packaging.request_package(session, model, found, rebuild=rebuild, actor=principal.name):
        response.status_code = status.HTTP_200_OK
    return _version_read(session, model, found)


@router.get(
    "/{name}/versions/{version}/package/bundle",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}}}},
)
def download_model_bundle(
    name: str, version: VersionRef, request: Request, session: DbSession, _: Viewer
) -> FileResponse:
    model = service.get_model_or_raise(session, name)
    found = service.get_version_or_raise(session, model, version)
    if not found.package or "bundle_digest" not in found.package:
        raise NotFound(f"version {found.version} has no bundle yet; POST .../package first")
    store: ArtifactStore = request.app.state.artifacts
    digest = found.package["bundle_digest"]
    return FileResponse(
        store.path_for_digest(digest),
        media_type="application/gzip",
        filename=f"{model.name}-{found.version}.tar.gz",
        headers={"X-Content-SHA256": digest},
    )


@router.put("/{name}/aliases/{alias}", response_model=AliasRead)
def set_model_alias(
    name: str,
    alias: str,
    body: AliasSet,
    session: DbSession,
    principal: Editor,
) -> AliasRead:
    """Point an alias at a ready version; moving `champion` needs the deployer role."""
    moved = service.set_alias(session, name, _valid_alias(alias), body.version, by=principal)
    return AliasRead(alias=moved.alias, version=body.version, updated_at=moved.updated_at)


@router.delete(
    "/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response
)
def delete_model_alias(name: str, alias: str, session: DbSession, principal: Editor) -> Response:
    service.delete_alias(session, name, _valid_alias(alias), by=principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{name}/alias-moves", response_model=AliasMovePage)
def list_alias_moves(name: str, session: DbSession, _: Viewer, page: Page) -> AliasMovePage:
    """Every alias move: who, when, from which version to which."""
    items, token = service.alias_history(session, name, page)
    return AliasMovePage(
        items=[AliasMoveRead.model_validate(m) for m in items], next_page_token=token
    )


def _valid_alias(alias: str) -> str:
    import re

    if not re.fullmatch(ALIAS_PATTERN, alias) or len(alias) > 100:
        raise Unprocessable(
            f"alias {alias!r} must be lowercase letters, digits, '_' or '-', starting with a letter"
        )
    return alias
