from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Response, status

from app.auth.dependencies import Editor, Viewer
from app.core.config import API_PREFIX
from app.core.deps import Artifacts, DbSession
from app.core.errors import ErrorResponse
from app.core.pagination import PageParams, page_params
from app.training import backtests, service, triggers
from app.training.schemas import (
    BacktestRead,
    BacktestRequest,
    EvaluationPage,
    EvaluationRead,
    PolicyCreate,
    PolicyPage,
    PolicyRead,
    PolicyUpdate,
    TriggerRequest,
)

errors: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
}
router = APIRouter(prefix=API_PREFIX + "/policies", tags=["training"], responses=errors)
Page = Annotated[PageParams, Depends(page_params)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=PolicyRead)
def create_policy(body: PolicyCreate, session: DbSession, principal: Editor) -> PolicyRead:
    """Which pipeline retrains which deployment's model, when (schedule, performance, drift,
    new data; manual always), from which rows (the window), and how (scratch, warm start,
    online). Production deployments need the deployer role."""
    return service.to_read(session, service.create(session, body, by=principal))


@router.get("", response_model=PolicyPage)
def list_policies(
    session: DbSession, _: Viewer, page: Page, deployment: str | None = None
) -> PolicyPage:
    items, token = service.list_policies(session, page, deployment)
    return PolicyPage(items=[service.to_read(session, p) for p in items], next_page_token=token)


@router.get("/{policy_id}", response_model=PolicyRead)
def get_policy(policy_id: int, session: DbSession, _: Viewer) -> PolicyRead:
    return service.to_read(session, service.get_or_raise(session, policy_id))


@router.patch("/{policy_id}", response_model=PolicyRead)
def update_policy(
    policy_id: int, body: PolicyUpdate, session: DbSession, principal: Editor
) -> PolicyRead:
    return service.to_read(session, service.update(session, policy_id, body, by=principal))


@router.delete("/{policy_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_policy(policy_id: int, session: DbSession, principal: Editor) -> Response:
    service.delete(session, policy_id, by=principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{policy_id}/trigger", status_code=status.HTTP_202_ACCEPTED, response_model=EvaluationRead
)
def trigger_policy(
    policy_id: int, body: TriggerRequest, session: DbSession, store: Artifacts, principal: Editor
) -> EvaluationRead:
    """Retrain now, with optional overrides. Refused with 409 while a retrain of this policy
    is running or inside the cooldown (`force` skips the cooldown); 422 when the window has
    no rows to learn from. The pipeline run is named in the answer."""
    policy = service.get_or_raise(session, policy_id, for_update=True)
    evaluation = triggers.evaluate(session, store, policy, manual=body, by=principal.name)
    return EvaluationRead.model_validate(evaluation, from_attributes=True)


@router.get("/{policy_id}/evaluations", response_model=EvaluationPage)
def list_evaluations(
    policy_id: int,
    session: DbSession,
    _: Viewer,
    page: Page,
    outcome: Literal["fired", "coalesced", "quiet"] | None = None,
) -> EvaluationPage:
    """Every evaluation, oldest first: what each trigger said and with which numbers, and
    how the retrain it started ended (challenger registered, rolled out, rejected...)."""
    items, token = service.list_evaluations(session, policy_id, page, outcome)
    return EvaluationPage(
        items=[EvaluationRead.model_validate(e, from_attributes=True) for e in items],
        next_page_token=token,
    )


@router.post("/{policy_id}/backtest", response_model=BacktestRead)
def backtest_policy(
    policy_id: int, body: BacktestRequest, session: DbSession, store: Artifacts, _: Editor
) -> BacktestRead:
    """Replay a labelled history (a dataset version with a time column) through the policy
    and the alternatives given: how often each retrains, when, and the model's accuracy (or
    RMSE) over time. Runs in the request; bounded by the history's size."""
    return backtests.run(session, store, service.get_or_raise(session, policy_id), body)
