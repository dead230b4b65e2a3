from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.core.pagination import Page

NAME = r"^[a-z][a-z0-9_-]*$"


class GitSourceCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=NAME, examples=["churn-repo"])
    repo_url: str = Field(
        min_length=1, max_length=2000, description="https://, ssh:// (or git@host:path) or file://"
    )
    branch: str = Field(
        default="main", max_length=250, description="branch name or glob, e.g. release/*"
    )
    pipeline: str = Field(description="The pipeline a push triggers.")
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=500,
        description="Webhook secret; generated if absent.",
    )


class GitSourceRead(BaseModel):
    id: int
    name: str
    repo_url: str = Field(description="Without credentials: those are stored encrypted apart.")
    has_credentials: bool = Field(
        description="Whether the URL given had user info (user:password or a token), which "
        "clones use and which is never shown back."
    )
    branch: str
    pipeline: str
    hook_path: str = Field(description="Where to point the Git host's webhook.")
    created_at: datetime


class GitSourceCreated(GitSourceRead):
    secret: str = Field(description="Shown once; configure it in the Git host's webhook.")


class GitSourcePage(Page[GitSourceRead]):
    pass


class DataSourceCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=NAME, examples=["churn-landing"])
    dataset: str = Field(description="Dataset that new files become versions of.")
    pipeline: str | None = Field(default=None, description="Pipeline each new version triggers.")
    git_source: str | None = Field(default=None, description="Code for data-triggered runs.")
    secret: str | None = Field(default=None, min_length=16, max_length=500)


class DataSourceRead(BaseModel):
    id: int
    name: str
    dataset: str
    pipeline: str | None
    git_source: str | None
    hook_path: str
    created_at: datetime


class DataSourceCreated(DataSourceRead):
    secret: str = Field(
        description="Shown once. Send `Authorization: Bearer <secret>` (S3/MinIO) or sign the "
        "body: X-Flywheel-Signature: sha256=HMAC(secret, timestamp + '.' + body)."
    )


class DataSourcePage(Page[DataSourceRead]):
    pass


class HookResult(BaseModel):
    status: str = Field(description="accepted, ignored or duplicate")
    reason: str
    pipeline_run_ids: list[int] = Field(default_factory=list)
    deliveries: int = 1


class DeliveryRead(BaseModel):
    """One inbound delivery and what came of it; signatures and secrets are never kept."""

    id: int
    delivery_id: str = Field(
        description="The sender's id: X-GitHub-Delivery, GitLab's Idempotency-Key, an object's "
        "bucket/key@version#sequencer, or the generic body's delivery_id."
    )
    event: str = Field(description="push, pull_request, s3:ObjectCreated:Put, ...")
    outcome: Literal["accepted", "ignored", "ingested", "failed"] = Field(
        description="accepted: a run started (git) or ingest is queued (data); ignored: nothing "
        "to do; ingested: the object became a dataset version; failed: see message."
    )
    message: str = Field(description="Why it was ignored, what was ingested, or what failed.")
    object_uri: str | None = Field(description="The object a data delivery names.")
    pipeline_run_id: int | None = Field(description="The pipeline run it started.")
    dataset_version_id: int | None = Field(description="The dataset version it created.")
    received_at: datetime
    settled_at: datetime | None = Field(
        description="When the outcome became final; null while ingest is queued."
    )


class DeliveryPage(Page[DeliveryRead]):
    pass
