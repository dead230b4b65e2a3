from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, status
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.auth.dependencies import Admin, Viewer
from app.auth.guard import MAX_HOOK_BODY
from app.core.config import API_PREFIX
from app.core.deps import AppSettings, DbSession
from app.core.errors import ErrorResponse, PayloadTooLarge
from app.core.pagination import PageParams, page_params
from app.datasets.models import Dataset
from app.pipelines.models import Pipeline
from app.sources import gitops, service
from app.sources.models import DataSource, GitSource, WebhookDelivery
from app.sources.schemas import (
    DataSourceCreate,
    DataSourceCreated,
    DataSourcePage,
    DataSourceRead,
    DeliveryPage,
    DeliveryRead,
    GitSourceCreate,
    GitSourceCreated,
    GitSourcePage,
    GitSourceRead,
    HookResult,
)

errors: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
}
router = APIRouter(prefix=API_PREFIX + "/sources", tags=["sources"], responses=errors)
hooks = APIRouter(prefix=API_PREFIX + "/hooks", tags=["hooks"], responses=errors)
Page = Annotated[PageParams, Depends(page_params)]


def _git_read(session: Session, source: GitSource) -> dict[str, Any]:
    return {
        "id": source.id,
        "name": source.name,
        "repo_url": gitops.redact(source.repo_url),
        "has_credentials": source.credentials_encrypted is not None,
        "branch": source.branch_pattern,
        "pipeline": service.name_of(session, Pipeline, source.pipeline_id),
        "hook_path": service.hook_path("git", source.name),
        "created_at": source.created_at,
    }


def _data_read(session: Session, source: DataSource) -> dict[str, Any]:
    return {
        "id": source.id,
        "name": source.name,
        "dataset": service.name_of(session, Dataset, source.dataset_id),
        "pipeline": service.name_of(session, Pipeline, source.pipeline_id),
        "git_source": service.name_of(session, GitSource, source.git_source_id),
        "hook_path": service.hook_path("data", source.name),
        "created_at": source.created_at,
    }


def _delivery_read(delivery: WebhookDelivery) -> DeliveryRead:
    return DeliveryRead(
        id=delivery.id,
        delivery_id=delivery.delivery_id,
        event=delivery.event,
        outcome=delivery.outcome,
        message=delivery.reason,
        object_uri=delivery.object_uri,
        pipeline_run_id=delivery.pipeline_run_id,
        dataset_version_id=delivery.dataset_version_id,
        received_at=delivery.received_at,
        settled_at=delivery.settled_at,
    )


def _deliveries(session: Session, kind: str, name: str, page: PageParams) -> DeliveryPage:
    items, token = service.list_deliveries(session, kind, name, page)
    return DeliveryPage(items=[_delivery_read(d) for d in items], next_page_token=token)


@router.post("/git", status_code=status.HTTP_201_CREATED, response_model=GitSourceCreated)
def create_git_source(
    body: GitSourceCreate, session: DbSession, settings: AppSettings, _: Admin
) -> GitSourceCreated:
    source, secret = service.create_git_source(session, settings, body)
    return GitSourceCreated(**_git_read(session, source), secret=secret)


@router.get("/git", response_model=GitSourcePage)
def list_git_sources(session: DbSession, _: Admin, page: Page) -> GitSourcePage:
    items, token = service.list_git(session, page)
    return GitSourcePage(
        items=[GitSourceRead(**_git_read(session, s)) for s in items], next_page_token=token
    )


@router.get("/git/{name}", response_model=GitSourceRead)
def get_git_source(name: str, session: DbSession, _: Admin) -> GitSourceRead:
    return GitSourceRead(**_git_read(session, service.get_git_or_raise(session, name)))


@router.delete("/git/{name}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_git_source(name: str, session: DbSession, _: Admin) -> Response:
    service.delete_git(session, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/git/{name}/deliveries", response_model=DeliveryPage)
def list_git_deliveries(name: str, session: DbSession, _: Viewer, page: Page) -> DeliveryPage:
    """Every push or merge event received, newest first: ignored, or the run it started."""
    return _deliveries(session, "git", name, page)


@router.post("/data", status_code=status.HTTP_201_CREATED, response_model=DataSourceCreated)
def create_data_source(
    body: DataSourceCreate, session: DbSession, settings: AppSettings, _: Admin
) -> DataSourceCreated:
    source, secret = service.create_data_source(session, settings, body)
    return DataSourceCreated(**_data_read(session, source), secret=secret)


@router.get("/data", response_model=DataSourcePage)
def list_data_sources(session: DbSession, _: Admin, page: Page) -> DataSourcePage:
    items, token = service.list_data(session, page)
    return DataSourcePage(
        items=[DataSourceRead(**_data_read(session, s)) for s in items], next_page_token=token
    )


@router.get("/data/{name}", response_model=DataSourceRead)
def get_data_source(name: str, session: DbSession, _: Admin) -> DataSourceRead:
    return DataSourceRead(**_data_read(session, service.get_data_or_raise(session, name)))


@router.delete("/data/{name}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_data_source(name: str, session: DbSession, _: Admin) -> Response:
    service.delete_data(session, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/data/{name}/deliveries", response_model=DeliveryPage)
def list_data_deliveries(name: str, session: DbSession, _: Viewer, page: Page) -> DeliveryPage:
    """Every object notification received, newest first: queued, ingested (with the dataset
    version and run it started) or failed with the reason."""
    return _deliveries(session, "data", name, page)


async def _body(request: Request) -> bytes:
    body = await request.body()
    if len(body) > MAX_HOOK_BODY:
        raise PayloadTooLarge(f"webhook bodies are limited to {MAX_HOOK_BODY} bytes")
    return body


@hooks.post(
    "/git/{source}",
    response_model=HookResult,
    responses={401: {"model": ErrorResponse}, 202: {"model": HookResult}},
)
async def receive_git_webhook(
    source: str, request: Request, response: Response, session: DbSession, settings: AppSettings
) -> HookResult:
    """GitHub (X-Hub-Signature-256) or GitLab (X-Gitlab-Token) push and merge events. No bearer
    token: the signature authenticates. 202 when a run starts; 200 when ignored or a repeat."""
    body = await _body(request)
    result = await run_in_threadpool(
        service.handle_git_hook, session, settings, source, dict(request.headers), body
    )
    response.status_code = (
        status.HTTP_202_ACCEPTED if result.status == "accepted" else status.HTTP_200_OK
    )
    return result


@hooks.post(
    "/data/{source}",
    response_model=HookResult,
    responses={401: {"model": ErrorResponse}, 202: {"model": HookResult}},
)
async def receive_data_webhook(
    source: str, request: Request, response: Response, session: DbSession, settings: AppSettings
) -> HookResult:
    """S3 / MinIO object-created notifications (Authorization: Bearer <secret>) or a generic
    signed JSON body `{"uri", "delivery_id"}` (X-Flywheel-Signature, X-Flywheel-Timestamp)."""
    body = await _body(request)
    result = await run_in_threadpool(
        service.handle_data_hook, session, settings, source, dict(request.headers), body
    )
    response.status_code = (
        status.HTTP_202_ACCEPTED if result.status == "accepted" else status.HTTP_200_OK
    )
    return result
