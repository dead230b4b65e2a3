from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response, status

from app.auth.dependencies import Editor, Viewer
from app.core.artifacts import ArtifactStore
from app.core.config import API_PREFIX
from app.core.deps import DbSession
from app.core.errors import ErrorResponse
from app.explain import importance, plots, service
from app.explain.schemas import (
    AttributionDriftRead,
    ExplainRequest,
    ExplanationRead,
    ImportanceRead,
    ImportanceRequest,
    PlotFormat,
)

router = APIRouter(
    prefix=API_PREFIX + "/models/{name}/versions/{version}",
    tags=["explain"],
    responses={
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
    },
)
Format = Annotated[PlotFormat, Query(description="png or svg")]
IMAGE: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}, "image/svg+xml": {}}}}


def _store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.artifacts
    return store


@router.post("/explain", response_model=ExplanationRead)
def explain_model_version(
    name: str, version: str, body: ExplainRequest, request: Request, session: DbSession, _: Viewer
) -> ExplanationRead:
    """SHAP values per row and input column, with the base value and the output they sum to.
    The explainer is chosen by model (tree, linear, or kernel within `max_evals`)."""
    return service.explain(session, _store(request), name, version, body)


@router.post("/explain/plot", response_class=Response, responses=IMAGE)
def plot_model_version_explanation(
    name: str,
    version: str,
    body: ExplainRequest,
    request: Request,
    session: DbSession,
    _: Viewer,
    format: Format = "png",
    row: Annotated[int, Query(ge=0, description="Which row of the request to draw.")] = 0,
) -> Response:
    """A waterfall from the base value to the output for one row (PNG or SVG)."""
    image = service.waterfall_plot(
        session, _store(request), name, version, body, row=row, fmt=format
    )
    return Response(image, media_type=plots.MEDIA_TYPES[format])


@router.post(
    "/importance",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ImportanceRead,
    responses={200: {"model": ImportanceRead}},
)
def request_model_version_importance(
    name: str,
    version: str,
    body: ImportanceRequest,
    request: Request,
    response: Response,
    session: DbSession,
    principal: Editor,
) -> ImportanceRead:
    """Global importance (mean |SHAP| over a sample of the reference data) as a job: 202 with
    the job's resource, or 200 with the cached result for the same version, data and size."""
    result = importance.request_importance(
        session, name, version, body, by=principal, store=_store(request)
    )
    if result.cached:
        response.status_code = status.HTTP_200_OK
    return result


@router.get("/importance", response_model=ImportanceRead)
def get_model_version_importance(
    name: str,
    version: str,
    session: DbSession,
    _: Viewer,
    sample_rows: Annotated[int | None, Query(ge=1)] = None,
    source: Literal["reference", "production"] | None = None,
) -> ImportanceRead:
    """The newest ready global importance (or the pending job), with sample size and time."""
    return importance.get_importance(session, name, version, sample_rows, source)


@router.get("/importance/plot", response_class=Response, responses=IMAGE)
def plot_model_version_importance(
    name: str,
    version: str,
    session: DbSession,
    _: Viewer,
    format: Format = "png",
    top: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    """A bar chart of global importance (PNG or SVG)."""
    image = importance.importance_plot(session, name, version, fmt=format, top=top)
    return Response(image, media_type=plots.MEDIA_TYPES[format])


@router.get("/attribution-drift", response_model=AttributionDriftRead)
def get_attribution_drift(
    name: str,
    version: str,
    session: DbSession,
    _: Viewer,
    baseline: Annotated[
        str | None, Query(description="The version to compare with (number/alias).")
    ] = None,
    against: Literal["versions", "production"] = "versions",
    k: Annotated[int | None, Query(ge=1, description="Compare the top k features.")] = None,
    threshold: Annotated[float, Query(gt=0, le=1)] = 0.9,
) -> AttributionDriftRead:
    """Has the ranking of features by importance changed? nDCG@k of this version's ranking
    against the baseline version's, or against itself on reference data
    (`against=production`, its latest production-window importance); `drifted` when it falls
    below the threshold."""
    return importance.attribution_drift(
        session, name, version, baseline=baseline, k=k, threshold=threshold, against=against
    )
