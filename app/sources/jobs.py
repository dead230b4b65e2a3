"""Turning an object-created notification into a dataset version and a pipeline run."""

import logging
from pathlib import Path
from urllib.parse import urlparse

from sqlalchemy.orm import Session

from app.core.db import utcnow
from app.core.errors import AppError
from app.core.jobs import JobContext, job
from app.datasets import service as datasets
from app.datasets.models import Dataset
from app.events import service as events
from app.events.types import EventType
from app.pipelines import service as pipelines
from app.pipelines.models import Pipeline
from app.sources.models import DataSource, GitSource, WebhookDelivery
from app.sources.service import INGEST_JOB

logger = logging.getLogger(__name__)


class ObjectUnavailable(ValueError):
    pass


def local_path(ctx: JobContext, uri: str) -> Path:
    """Where the object's bytes are on this machine: object stores through the configured
    mirror root, everything else only inside the artifact store."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        root = ctx.settings.object_store_root
        if root is None:
            raise ObjectUnavailable(
                "s3:// objects need FLYWHEEL_OBJECT_STORE_ROOT (a mounted bucket root)"
            )
        path = (root / parsed.netloc / parsed.path.lstrip("/")).resolve()
        if not path.is_relative_to(root.resolve()):
            raise ObjectUnavailable(f"{uri} points outside the object store root")
        return path
    if parsed.scheme in ("", "artifacts"):
        return ctx.artifacts.resolve(uri)
    raise ObjectUnavailable(f"unsupported uri scheme {parsed.scheme!r}; use s3:// or a store path")


def _fail(
    session: Session, delivery: WebhookDelivery, source: DataSource | None, reason: str
) -> None:
    """A failure after the webhook's 202: on the delivery (listed by the API), in the log and
    as an event subscriptions can deliver."""
    delivery.outcome, delivery.reason, delivery.settled_at = "failed", reason, utcnow()
    name = source.name if source is not None else f"#{delivery.source_id}"
    logger.warning(
        "data source %s: ingest of delivery %s failed: %s", name, delivery.delivery_id, reason
    )
    events.record(
        session,
        EventType.data_source_ingest_failed,
        f"data_source:{name}",
        {
            "data_source": name,
            "delivery": delivery.id,
            "delivery_id": delivery.delivery_id,
            "uri": delivery.object_uri,
            "reason": reason,
        },
    )


@job(INGEST_JOB)
def ingest_object(session: Session, ctx: JobContext, delivery_id: int, uri: str) -> None:
    delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if delivery is None or delivery.outcome != "accepted":
        return  # handled already: deliveries are at least once
    source = session.get(DataSource, delivery.source_id)
    dataset = session.get(Dataset, source.dataset_id) if source else None
    if source is None or dataset is None:
        _fail(session, delivery, source, "the data source or its dataset was deleted")
        return
    try:
        path = local_path(ctx, uri)
        if not path.is_file():
            raise ObjectUnavailable(f"{uri} is not a file at {path}")
        staged = ctx.artifacts.stage_file(path, max_bytes=ctx.settings.max_upload_bytes)
        version, _ = datasets.add_version(
            session,
            ctx.artifacts,
            dataset.name,
            staged,
            limits=datasets.upload_limits(ctx.settings),
            filename=path.name,
            source_uri=uri,
        )
    except (ObjectUnavailable, AppError, OSError) as exc:
        _fail(session, delivery, source, str(getattr(exc, "message", exc)))
        return
    delivery.outcome, delivery.settled_at = "ingested", utcnow()
    delivery.reason = f"{delivery.object_uri or uri} -> {dataset.name} v{version.version}"
    delivery.dataset_version_id = version.id
    pipeline = session.get(Pipeline, source.pipeline_id) if source.pipeline_id else None
    if pipeline is None:
        return
    git = session.get(GitSource, source.git_source_id) if source.git_source_id else None
    run = pipelines.start_run(
        session,
        pipeline,
        trigger="data",
        dataset_version_id=version.id,
        repo_url=git.repo_url if git else None,
        git_source_id=git.id if git else None,
        branch=git.branch_pattern if git else None,
        created_by=f"data:{source.name}",
    )
    delivery.pipeline_run_id = run.id
