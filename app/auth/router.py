from typing import Annotated

from fastapi import APIRouter, Depends, status

from app.auth import service
from app.auth.dependencies import Admin
from app.auth.schemas import TokenCreate, TokenCreated, TokenPage, TokenRead
from app.core.config import API_PREFIX
from app.core.deps import DbSession
from app.core.pagination import PageParams, page_params

router = APIRouter(prefix=API_PREFIX + "/tokens", tags=["auth"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TokenCreated)
def create_token(body: TokenCreate, session: DbSession, principal: Admin) -> TokenCreated:
    token, secret = service.create_token(
        session, name=body.name, role=body.role, expires_at=body.expires_at, created_by=principal
    )
    return TokenCreated.model_validate(
        {**TokenRead.model_validate(token).model_dump(), "token": secret}
    )


@router.get("", response_model=TokenPage)
def list_tokens(
    session: DbSession, _: Admin, page: Annotated[PageParams, Depends(page_params)]
) -> TokenPage:
    items, next_token = service.list_tokens(session, page)
    return TokenPage(items=[TokenRead.model_validate(t) for t in items], next_page_token=next_token)


@router.delete("/{token_id}", response_model=TokenRead)
def revoke_token(token_id: int, session: DbSession, principal: Admin) -> TokenRead:
    return TokenRead.model_validate(service.revoke_token(session, token_id, by=principal))
