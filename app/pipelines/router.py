from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import PlainTextResponse

from app.auth.dependencies import Editor, Viewer
from app.core.config import API_PREFIX
from app.core.deps import DbSession
from app.core.errors import ErrorResponse
from app.core.pagination import PageParams, page_params
from app.pipelines import service
from app.pipelines.schemas import (
    PipelineCreate,
    PipelinePage,
    PipelineRead,
    PipelineRunPage,
    PipelineRunRead,
    PipelineUpdate,
    RunRequest,
    TaskLog,
    pipeline_read,
    run_read,
)
from app.pipelines.spec import PipelineSpec, to_dot, to_mermaid
from app.sources import service as sources

errors: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
}
pipelines = APIRouter(prefix=API_PREFIX + "/pipelines", tags=["pipelines"], responses=errors)
runs = APIRouter(prefix=API_PREFIX + "/pipeline-runs", tags=["pipelines"], responses=errors)
Page = Annotated[PageParams, Depends(page_params)]


@pipelines.post("", status_code=status.HTTP_201_CREATED, response_model=PipelineRead)
def create_pipeline(body: PipelineCreate, session: DbSession, _: Editor) -> PipelineRead:
    """A DAG of tasks (train, evaluate, register, package, python), optionally on a cron."""
    return pipeline_read(service.create_pipeline(session, body))


@pipelines.get("", response_model=PipelinePage)
def list_pipelines(session: DbSession, _: Viewer, page: Page) -> PipelinePage:
    items, token = service.list_pipelines(session, page)
    return PipelinePage(items=[pipeline_read(p) for p in items], next_page_token=token)


@pipelines.get("/{name}", response_model=PipelineRead)
def get_pipeline(name: str, session: DbSession, _: Viewer) -> PipelineRead:
    return pipeline_read(service.get_or_raise(session, name))


@pipelines.patch("/{name}", response_model=PipelineRead)
def update_pipeline(name: str, body: PipelineUpdate, session: DbSession, _: Editor) -> PipelineRead:
    return pipeline_read(service.update_pipeline(session, name, body))


@pipelines.post("/{name}/pause", response_model=PipelineRead)
def pause_pipeline_schedule(name: str, session: DbSession, _: Editor) -> PipelineRead:
    return pipeline_read(service.set_paused(session, name, True))


@pipelines.post("/{name}/resume", response_model=PipelineRead)
def resume_pipeline_schedule(name: str, session: DbSession, _: Editor) -> PipelineRead:
    return pipeline_read(service.set_paused(session, name, False))


@pipelines.get("/{name}/graph", response_class=PlainTextResponse)
def get_pipeline_graph(
    name: str,
    session: DbSession,
    _: Viewer,
    format: Literal["mermaid", "dot"] = "mermaid",
    run_id: Annotated[
        int | None, Query(description="Colour the nodes by this run's task states")
    ] = None,
) -> PlainTextResponse:
    """The DAG as Mermaid or Graphviz text, for docs and dashboards."""
    pipeline = service.get_or_raise(session, name)
    spec, states = PipelineSpec.model_validate(pipeline.spec), None
    if run_id is not None:
        run = service.get_run_or_raise(session, run_id)
        spec = PipelineSpec.model_validate(run.spec)
        states = {t.name: t.status.value for t in run.tasks}
    render = to_mermaid if format == "mermaid" else to_dot
    return PlainTextResponse(render(spec, states))


@pipelines.post(
    "/{name}/runs", status_code=status.HTTP_202_ACCEPTED, response_model=PipelineRunRead
)
def create_pipeline_run(
    name: str, body: RunRequest, session: DbSession, principal: Editor
) -> PipelineRunRead:
    pipeline = service.get_or_raise(session, name)
    service.check_run_params(session, pipeline, body.params)
    repo_url, git_source_id, branch = None, None, body.branch
    if body.source is not None:
        git = sources.get_git_or_raise(session, body.source)
        repo_url, git_source_id = git.repo_url, git.id
        branch = body.branch or git.branch_pattern
    run = service.start_run(
        session,
        pipeline,
        trigger="manual",
        params=body.params,
        repo_url=repo_url,
        git_source_id=git_source_id,
        branch=branch,
        commit=body.commit,
        dataset_version_id=body.dataset_version_id,
        created_by=principal.name,
    )
    return run_read(run, pipeline.name)


@runs.get("", response_model=PipelineRunPage)
def list_pipeline_runs(
    session: DbSession, _: Viewer, page: Page, pipeline: str | None = None
) -> PipelineRunPage:
    items, token = service.list_runs(session, page, pipeline=pipeline)
    return PipelineRunPage(
        items=[run_read(r, r.pipeline.name) for r in items], next_page_token=token
    )


@runs.get("/{run_id}", response_model=PipelineRunRead)
def get_pipeline_run(run_id: int, session: DbSession, _: Viewer) -> PipelineRunRead:
    """Every task's state, attempts, timings and outputs."""
    run = service.get_run_or_raise(session, run_id)
    return run_read(run, run.pipeline.name)


@runs.post("/{run_id}/cancel", response_model=PipelineRunRead)
def cancel_pipeline_run(run_id: int, session: DbSession, principal: Editor) -> PipelineRunRead:
    """Stops running tasks within seconds; tasks not yet started become cancelled."""
    run = service.cancel_run(session, run_id, by=principal.name)
    return run_read(run, run.pipeline.name)


@runs.get("/{run_id}/tasks/{task}/logs", response_model=TaskLog)
def get_task_logs(
    run_id: int,
    task: str,
    request: Request,
    session: DbSession,
    _: Viewer,
    offset: Annotated[
        int,
        Query(
            ge=0, le=service.MAX_LOG_OFFSET, description="Byte offset; past the end reads nothing."
        ),
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=10 * 1024 * 1024)] = 1024 * 1024,
) -> TaskLog:
    """The task's output; poll with `offset=next_offset` to follow it while it runs."""
    text, next_offset, complete = service.read_log(
        session, request.app.state.artifacts, run_id, task, offset, limit
    )
    return TaskLog(task=task, offset=offset, next_offset=next_offset, complete=complete, text=text)
