"""Sources of change: Git repositories and data drops, and their inbound webhooks.

A webhook is checked (signature, constant time) before anything is read from the body; a
delivery id is recorded under a unique constraint, so a retried or replayed delivery starts
nothing twice; accepted deliveries write the run (or the ingest job) in the same transaction.
"""

import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.config import API_PREFIX, Settings
from app.core.db import utcnow
from app.core.errors import AppError, BadRequest, Conflict, NotFound, Unprocessable
from app.core.outbox import enqueue
from app.core.pagination import PageParams, keyset_page
from app.core.secrets import decrypt, encrypt
from app.datasets.models import Dataset
from app.pipelines import service as pipelines
from app.pipelines.models import Pipeline
from app.sources import gitops, webhooks
from app.sources.models import DataSource, GitSource, WebhookDelivery
from app.sources.schemas import DataSourceCreate, GitSourceCreate, HookResult

INGEST_JOB = "sources.ingest_object"


class WebhookRejected(AppError):
    def __init__(self, error: webhooks.WebhookError) -> None:
        super().__init__(str(error), code="webhook_rejected")
        self.status_code = error.status


def create_git_source(
    session: Session, settings: Settings, data: GitSourceCreate
) -> tuple[GitSource, str]:
    try:
        url = gitops.validate_repo_url(data.repo_url)
    except ValueError as exc:
        raise Unprocessable(str(exc), details={"field": "repo_url"}) from exc
    if session.scalar(select(GitSource.id).where(GitSource.name == data.name)):
        raise Conflict(f"a git source named {data.name!r} already exists")
    pipeline = pipelines.get_or_raise(session, data.pipeline)
    secret = data.secret or secrets.token_urlsafe(32)
    url, credentials = gitops.split_credentials(url)
    source = GitSource(
        name=data.name,
        repo_url=url,
        branch_pattern=data.branch,
        pipeline_id=pipeline.id,
        secret_encrypted=encrypt(settings, secret),
        credentials_encrypted=encrypt(settings, credentials) if credentials else None,
    )
    session.add(source)
    session.flush()
    return source, secret


def create_data_source(
    session: Session, settings: Settings, data: DataSourceCreate
) -> tuple[DataSource, str]:
    if session.scalar(select(DataSource.id).where(DataSource.name == data.name)):
        raise Conflict(f"a data source named {data.name!r} already exists")
    dataset = session.scalar(select(Dataset).where(Dataset.name == data.dataset))
    if dataset is None:
        raise Unprocessable(
            f"dataset {data.dataset!r} does not exist", details={"field": "dataset"}
        )
    pipeline = pipelines.get_or_raise(session, data.pipeline) if data.pipeline else None
    git = get_git_or_raise(session, data.git_source) if data.git_source else None
    secret = data.secret or secrets.token_urlsafe(32)
    source = DataSource(
        name=data.name,
        dataset_id=dataset.id,
        pipeline_id=pipeline.id if pipeline else None,
        git_source_id=git.id if git else None,
        secret_encrypted=encrypt(settings, secret),
    )
    session.add(source)
    session.flush()
    return source, secret


def get_git_or_raise(session: Session, name: str) -> GitSource:
    source = session.scalar(select(GitSource).where(GitSource.name == name))
    if source is None:
        raise NotFound(f"git source {name!r} does not exist")
    return source


def get_data_or_raise(session: Session, name: str) -> DataSource:
    source = session.scalar(select(DataSource).where(DataSource.name == name))
    if source is None:
        raise NotFound(f"data source {name!r} does not exist")
    return source


def list_git(session: Session, page: PageParams) -> tuple[Sequence[GitSource], str | None]:
    return keyset_page(session, select(GitSource), GitSource.id, page)


def list_data(session: Session, page: PageParams) -> tuple[Sequence[DataSource], str | None]:
    return keyset_page(session, select(DataSource), DataSource.id, page)


def delete_git(session: Session, name: str) -> None:
    session.delete(get_git_or_raise(session, name))
    session.flush()


def delete_data(session: Session, name: str) -> None:
    session.delete(get_data_or_raise(session, name))
    session.flush()


def name_of(session: Session, model: Any, row_id: int | None) -> str | None:
    return session.scalar(select(model.name).where(model.id == row_id)) if row_id else None


def hook_path(kind: str, name: str) -> str:
    return f"{API_PREFIX}/hooks/{kind}/{name}"


def list_deliveries(
    session: Session, kind: str, name: str, page: PageParams
) -> tuple[Sequence[WebhookDelivery], str | None]:
    """A source's inbound deliveries, newest first."""
    source = get_git_or_raise(session, name) if kind == "git" else get_data_or_raise(session, name)
    stmt = select(WebhookDelivery).where(
        WebhookDelivery.source_kind == kind, WebhookDelivery.source_id == source.id
    )
    return keyset_page(session, stmt, WebhookDelivery.id, page, newest_first=True)


def _record_delivery(
    session: Session,
    kind: str,
    source_id: int,
    delivery_id: str,
    *,
    event: str,
    outcome: str,
    reason: str,
    object_uri: str | None = None,
) -> WebhookDelivery | None:
    """None when this delivery id was seen before (the unique constraint decides races).
    Only a queued ingest is unsettled: every other outcome is final when recorded."""
    delivery = WebhookDelivery(
        source_kind=kind,
        source_id=source_id,
        delivery_id=delivery_id,
        event=event[:200],
        outcome=outcome,
        reason=reason,
        object_uri=object_uri,
        settled_at=None if kind == "data" and outcome == "accepted" else utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(delivery)
            session.flush()
    except IntegrityError:
        return None
    return delivery


def handle_git_hook(
    session: Session, settings: Settings, name: str, headers: Mapping[str, str], body: bytes
) -> HookResult:
    source = get_git_or_raise(session, name)
    secret = decrypt(settings, source.secret_encrypted)
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        if "x-github-event" in lowered:
            webhooks.verify_github(body, lowered.get("x-hub-signature-256"), secret)
            push = webhooks.parse_github(lowered, body)
        elif "x-gitlab-event" in lowered:
            webhooks.verify_gitlab(lowered.get("x-gitlab-token"), secret)
            push = webhooks.parse_gitlab(lowered, body)
        else:
            raise BadRequest(
                "not a GitHub or GitLab webhook: X-GitHub-Event or X-Gitlab-Event is missing"
            )
    except webhooks.WebhookError as exc:
        raise WebhookRejected(exc) from exc
    reason = push.reason
    accepted = push.actionable and push.branch is not None and push.commit is not None
    if accepted and not webhooks.branch_matches(push.branch or "", source.branch_pattern):
        accepted, reason = False, f"branch {push.branch!r} does not match {source.branch_pattern!r}"
    delivery = _record_delivery(
        session,
        "git",
        source.id,
        push.delivery_id,
        event=push.event,
        outcome="accepted" if accepted else "ignored",
        reason=reason,
    )
    if delivery is None:
        return HookResult(
            status="duplicate", reason=f"delivery {push.delivery_id} was already received"
        )
    if not accepted:
        return HookResult(status="ignored", reason=reason)
    pipeline = session.get(Pipeline, source.pipeline_id)
    assert pipeline is not None
    run = pipelines.start_run(
        session,
        pipeline,
        trigger="git",
        repo_url=source.repo_url,
        git_source_id=source.id,
        branch=push.branch,
        commit=push.commit,
        created_by=f"git:{source.name}",
    )
    delivery.pipeline_run_id = run.id
    return HookResult(status="accepted", reason=reason, pipeline_run_ids=[run.id])


def handle_data_hook(
    session: Session, settings: Settings, name: str, headers: Mapping[str, str], body: bytes
) -> HookResult:
    source = get_data_or_raise(session, name)
    secret = decrypt(settings, source.secret_encrypted)
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        if "x-flywheel-signature" in lowered:
            webhooks.verify_generic(
                body,
                lowered.get("x-flywheel-signature"),
                lowered.get("x-flywheel-timestamp"),
                secret,
                now=time.time(),
            )
        else:
            webhooks.verify_bearer(lowered.get("authorization"), secret)
        found = webhooks.parse_object_events(body)
    except webhooks.WebhookError as exc:
        raise WebhookRejected(exc) from exc
    if not found:
        return HookResult(status="ignored", reason="no object-created records", deliveries=0)
    fresh = 0
    for event in found:
        delivery = _record_delivery(
            session,
            "data",
            source.id,
            event.delivery_id,
            event=event.event_name or "object",
            outcome="accepted",
            reason="queued for ingest",
            object_uri=gitops.redact(event.uri),
        )
        if delivery is not None:
            fresh += 1
            enqueue(session, INGEST_JOB, {"delivery_id": delivery.id, "uri": event.uri})
    if fresh == 0:
        return HookResult(
            status="duplicate", reason="every record was already received", deliveries=len(found)
        )
    return HookResult(
        status="accepted", reason=f"{fresh} new object(s) queued for ingest", deliveries=len(found)
    )
