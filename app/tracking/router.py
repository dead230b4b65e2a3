from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from app.auth.dependencies import Editor, Viewer
from app.core.artifacts import ArtifactStore
from app.core.config import API_PREFIX
from app.core.deps import AppSettings, DbSession
from app.core.errors import ErrorResponse
from app.core.pagination import PageParams, page_params
from app.tracking import service
from app.tracking.schemas import (
    ArtifactList,
    ArtifactRead,
    ExperimentCreate,
    ExperimentPage,
    ExperimentRead,
    ExperimentUpdate,
    InputsLog,
    MetricHistory,
    MetricPointRead,
    MetricsLog,
    MetricsLogged,
    ParamsLog,
    RunCreate,
    RunPage,
    RunRead,
    RunSearch,
    RunUpdate,
    run_read,
)

Page = Annotated[PageParams, Depends(page_params)]
errors: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
}

experiments = APIRouter(prefix=API_PREFIX + "/experiments", tags=["tracking"], responses=errors)
runs = APIRouter(prefix=API_PREFIX + "/runs", tags=["tracking"], responses=errors)


@experiments.post("", status_code=status.HTTP_201_CREATED, response_model=ExperimentRead)
def create_experiment(body: ExperimentCreate, session: DbSession, _: Editor) -> ExperimentRead:
    return ExperimentRead.model_validate(service.create_experiment(session, body))


@experiments.get("", response_model=ExperimentPage)
def list_experiments(
    session: DbSession,
    _: Viewer,
    page: Page,
    include_archived: bool = False,
    name: Annotated[str | None, Query(max_length=250)] = None,
) -> ExperimentPage:
    items, token = service.list_experiments(
        session, page, include_archived=include_archived, name=name
    )
    return ExperimentPage(
        items=[ExperimentRead.model_validate(e) for e in items], next_page_token=token
    )


@experiments.get("/{experiment_id}", response_model=ExperimentRead)
def get_experiment(experiment_id: int, session: DbSession, _: Viewer) -> ExperimentRead:
    return ExperimentRead.model_validate(service.get_experiment_or_raise(session, experiment_id))


@experiments.patch("/{experiment_id}", response_model=ExperimentRead)
def update_experiment(
    experiment_id: int, body: ExperimentUpdate, session: DbSession, _: Editor
) -> ExperimentRead:
    """Rename, describe, archive (`archived: true`) or restore an experiment."""
    return ExperimentRead.model_validate(service.update_experiment(session, experiment_id, body))


@runs.post("", status_code=status.HTTP_201_CREATED, response_model=RunRead)
def create_run(body: RunCreate, session: DbSession, _: Editor) -> RunRead:
    return run_read(service.create_run(session, body))


@runs.get("", response_model=RunPage)
def list_runs(
    session: DbSession, _: Viewer, page: Page, experiment_id: int | None = None
) -> RunPage:
    items, token = service.list_runs(session, page, experiment_id=experiment_id)
    return RunPage(items=[run_read(r) for r in items], next_page_token=token)


@runs.post("/search", response_model=RunPage, responses={422: {"model": ErrorResponse}})
def search_runs(body: RunSearch, session: DbSession, _: Viewer) -> RunPage:
    """Filter with `params.x`, `metrics.x` (latest value), `tags.x` and run attributes."""
    items, token = service.search_runs(session, body)
    return RunPage(items=items, next_page_token=token)


@runs.get("/{run_id}", response_model=RunRead)
def get_run(run_id: int, session: DbSession, _: Viewer) -> RunRead:
    return run_read(service.get_run_or_raise(session, run_id))


@runs.patch("/{run_id}", response_model=RunRead)
def update_run(run_id: int, body: RunUpdate, session: DbSession, _: Editor) -> RunRead:
    """Rename, tag, or end a run (`status`: finished | failed | killed)."""
    return run_read(service.update_run(session, run_id, body))


@runs.post("/{run_id}/params", response_model=RunRead)
def log_params(run_id: int, body: ParamsLog, session: DbSession, _: Editor) -> RunRead:
    return run_read(service.log_params(session, run_id, body.params))


@runs.post("/{run_id}/inputs", response_model=RunRead)
def log_inputs(run_id: int, body: InputsLog, session: DbSession, _: Editor) -> RunRead:
    return run_read(service.log_inputs(session, run_id, body.inputs))


@runs.post("/{run_id}/metrics", response_model=MetricsLogged)
def log_metrics(
    run_id: int, body: MetricsLog, session: DbSession, settings: AppSettings, _: Editor
) -> MetricsLogged:
    """Up to 10,000 points in one request, written with bulk inserts; a bad batch writes nothing."""
    written = service.log_metrics(
        session, run_id, body.metrics, limit=settings.max_metrics_per_batch
    )
    return MetricsLogged(written=written)


@runs.get("/{run_id}/metrics/{key:path}", response_model=MetricHistory)
def get_metric_history(
    run_id: int, key: str, session: DbSession, _: Viewer, page: Page
) -> MetricHistory:
    items, token = service.metric_history(session, run_id, key, page)
    return MetricHistory(
        key=key, items=[MetricPointRead.model_validate(m) for m in items], next_page_token=token
    )


@runs.get("/{run_id}/artifacts", response_model=ArtifactList)
def list_artifacts(
    run_id: int,
    session: DbSession,
    _: Viewer,
    prefix: Annotated[str | None, Query(max_length=1000)] = None,
) -> ArtifactList:
    items = service.list_artifacts(session, run_id, prefix)
    return ArtifactList(items=[ArtifactRead.model_validate(a) for a in items])


@runs.put(
    "/{run_id}/artifacts/{path:path}",
    response_model=ArtifactRead,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_artifact(
    run_id: int, path: str, request: Request, session: DbSession, settings: AppSettings, _: Editor
) -> ArtifactRead:
    """Stream the body to the artifact store; the sha256 is computed on the way in."""
    await run_in_threadpool(service.get_run_or_raise, session, run_id)
    service.validate_artifact_path(path)
    store: ArtifactStore = request.app.state.artifacts
    stored = await store.put_stream(request.stream(), max_bytes=settings.max_upload_bytes)
    content_type = request.headers.get("content-type", "application/octet-stream")
    artifact = await run_in_threadpool(
        service.record_artifact, session, run_id, path, stored, content_type
    )
    return ArtifactRead.model_validate(artifact)


@runs.get(
    "/{run_id}/artifacts/{path:path}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_artifact(
    run_id: int, path: str, request: Request, session: DbSession, _: Viewer
) -> FileResponse:
    artifact = service.get_artifact_or_raise(session, run_id, path)
    store: ArtifactStore = request.app.state.artifacts
    return FileResponse(
        store.path_for_digest(artifact.digest),
        media_type=artifact.content_type,
        filename=path.rsplit("/", 1)[-1],
        headers={"X-Content-SHA256": artifact.digest},
    )
