"""Request-scoped dependencies shared by every domain's router."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.core.artifacts import ArtifactStore
from app.core.config import Settings
from app.core.db import unit_of_work
from app.core.outbox import PENDING_IDS_KEY


def get_session(request: Request) -> Iterator[Session]:
    """The request owns the transaction; it commits after the handler, before the response."""
    with unit_of_work(request.app.state.session_factory) as session:
        yield session
    pending = session.info.pop(PENDING_IDS_KEY, None)
    if pending:
        request.app.state.dispatcher.kick(pending)


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_artifacts(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.artifacts
    return store


DbSession = Annotated[Session, Depends(get_session, scope="function")]
AppSettings = Annotated[Settings, Depends(get_app_settings)]
Artifacts = Annotated[ArtifactStore, Depends(get_artifacts)]
