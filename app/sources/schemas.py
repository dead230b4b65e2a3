from datetime import datetime

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
