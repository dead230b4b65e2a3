"""Tokens: create (secret shown once), authenticate (hash lookup), revoke."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth.models import ApiToken
from app.core.db import utcnow
from app.core.errors import Forbidden, NotFound, Unauthorized, Unprocessable
from app.core.pagination import PageParams, keyset_page
from app.core.security import Role, digests_match, generate_token, hash_token


@dataclass(frozen=True)
class Principal:
    """Who is calling: resolved from the bearer token once per request."""

    token_id: int
    name: str
    role: Role


def create_token(
    session: Session,
    *,
    name: str,
    role: Role,
    expires_at: datetime | None = None,
    created_by: Principal | None = None,
) -> tuple[ApiToken, str]:
    if expires_at is not None and expires_at <= utcnow():
        raise Unprocessable("expires_at must be in the future", details={"field": "expires_at"})
    secret = generate_token()
    token = ApiToken(
        name=name,
        role=role,
        secret_sha256=hash_token(secret),
        hint=secret[:8],
        expires_at=expires_at,
        created_by_id=created_by.token_id if created_by else None,
    )
    session.add(token)
    session.flush()
    return token, secret


def count_tokens(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ApiToken)) or 0


def list_tokens(session: Session, page: PageParams) -> tuple[Sequence[ApiToken], str | None]:
    return keyset_page(session, select(ApiToken), ApiToken.id, page)


def get_or_raise(session: Session, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"token {token_id} does not exist")
    return token


def revoke_token(session: Session, token_id: int, *, by: Principal) -> ApiToken:
    token = get_or_raise(session, token_id)
    if token.id == by.token_id:
        raise Forbidden("a token cannot revoke itself; use another admin token")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    return token


def authenticate(session: Session, secret: str, *, touch_every_seconds: int) -> Principal:
    digest = hash_token(secret)
    token = session.scalar(select(ApiToken).where(ApiToken.secret_sha256 == digest))
    if token is None or not digests_match(token.secret_sha256, digest):
        raise Unauthorized("the bearer token is not valid")
    now = utcnow()
    if token.revoked_at is not None:
        raise Unauthorized("the bearer token has been revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise Unauthorized("the bearer token has expired")
    stale = token.last_used_at is None or now - token.last_used_at >= timedelta(
        seconds=touch_every_seconds
    )
    if stale:
        token.last_used_at = now
    return Principal(token_id=token.id, name=token.name, role=token.role)
