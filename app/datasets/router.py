from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile, status
from starlette.concurrency import run_in_threadpool

from app.auth.dependencies import Editor, Viewer
from app.core.artifacts import CHUNK, ArtifactStore, StagedObject
from app.core.config import API_PREFIX
from app.core.deps import AppSettings, DbSession
from app.core.errors import ErrorResponse, Unprocessable
from app.core.pagination import PageParams, page_params
from app.datasets import service
from app.datasets.schemas import (
    DatasetCreate,
    DatasetPage,
    DatasetRead,
    DatasetVersionPage,
    DatasetVersionRead,
    version_read,
)

router = APIRouter(
    prefix=API_PREFIX + "/datasets",
    tags=["datasets"],
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
)
Page = Annotated[PageParams, Depends(page_params)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetRead)
def create_dataset(body: DatasetCreate, session: DbSession, _: Editor) -> DatasetRead:
    return DatasetRead.model_validate(service.create_dataset(session, body))


@router.get("", response_model=DatasetPage)
def list_datasets(session: DbSession, _: Viewer, page: Page) -> DatasetPage:
    items, token = service.list_datasets(session, page)
    return DatasetPage(items=[DatasetRead.model_validate(d) for d in items], next_page_token=token)


@router.get("/{name}", response_model=DatasetRead)
def get_dataset(name: str, session: DbSession, _: Viewer) -> DatasetRead:
    return DatasetRead.model_validate(service.get_dataset_or_raise(session, name))


@router.post(
    "/{name}/versions",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetVersionRead,
    responses={
        200: {"model": DatasetVersionRead},
        413: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
    },
)
async def create_dataset_version(
    name: str,
    request: Request,
    response: Response,
    session: DbSession,
    settings: AppSettings,
    _: Editor,
    file: Annotated[UploadFile | None, File(description="A CSV or Parquet file.")] = None,
    uri: Annotated[
        str | None, Form(description="Instead of a file: a path on the artifact store.")
    ] = None,
) -> DatasetVersionRead:
    """Upload a CSV or Parquet file (multipart `file`) or name one on the store (`uri`).

    Identical content is the same version: the answer is 200 with `created: false`.
    """
    store: ArtifactStore = request.app.state.artifacts
    await run_in_threadpool(service.get_dataset_or_raise, session, name)
    if (file is None) == (uri is None):
        raise Unprocessable("send exactly one of a multipart `file` or a `uri` form field")
    staged: StagedObject
    if file is not None:
        staged = await store.stage_stream(_chunks(file), max_bytes=settings.max_upload_bytes)
        filename, source_uri = file.filename, None
    else:
        assert uri is not None
        staged, filename = await run_in_threadpool(
            service.stage_from_uri, store, uri, max_bytes=settings.max_upload_bytes
        )
        source_uri = uri
    version, created = await run_in_threadpool(
        service.add_version,
        session,
        store,
        name,
        staged,
        limits=service.upload_limits(settings),
        filename=filename,
        source_uri=source_uri,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return version_read(version, name, created)


async def _chunks(upload: UploadFile):  # type: ignore[no-untyped-def]
    while chunk := await upload.read(CHUNK):
        yield chunk


@router.get("/{name}/versions", response_model=DatasetVersionPage)
def list_dataset_versions(
    name: str, session: DbSession, _: Viewer, page: Page
) -> DatasetVersionPage:
    items, token = service.list_versions(session, name, page)
    return DatasetVersionPage(items=[version_read(v, name) for v in items], next_page_token=token)


@router.get("/{name}/versions/{version}", response_model=DatasetVersionRead)
def get_dataset_version(
    name: str, version: int, session: DbSession, _: Viewer
) -> DatasetVersionRead:
    return version_read(service.get_version_or_raise(session, name, version), name)
