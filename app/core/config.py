"""The one place settings come from: environment variables prefixed FLYWHEEL_."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path(".flywheel")
API_PREFIX = "/api/v1"
# What a replica reads at most; the gateway's own limit (a setting) stays below it.
PREDICTION_BODY_CEILING = 256 * 1024**2


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="ignore")

    home: Path = Field(
        default=DEFAULT_HOME,
        description="Directory for embedded-mode state: the SQLite database and artifacts.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL. Empty means an embedded SQLite file under `home`.",
    )
    artifact_root: Path | None = Field(
        default=None, description="Local directory of the artifact store. Default: home/artifacts."
    )
    broker_url: str = Field(
        default="memory://", description="Celery broker URL; memory:// runs in-process."
    )
    broker_visibility_timeout: int = Field(
        default=7200,
        ge=10,
        description="Seconds before Redis redelivers an unacknowledged job; longer than any task.",
    )
    secret_key: str = Field(
        default="", description="Encrypts webhook secrets at rest. Required outside embedded mode."
    )
    git_cache: Path | None = Field(
        default=None, description="Git mirrors. Default: home/git-cache."
    )
    object_store_root: Path | None = Field(
        default=None,
        description="Local mirror of object stores: s3://bucket/key is read from root/bucket/key.",
    )
    task_heartbeat_seconds: int = Field(default=5, ge=1, le=300)
    sweep_seconds: float = Field(
        default=30, gt=0, description="How often beat looks for lost tasks and unsettled runs."
    )
    rollout_check_seconds: float = Field(
        default=5, gt=0, description="How often beat checks running rollouts' guardrails."
    )
    policy_check_seconds: float = Field(
        default=60, gt=0, description="How often beat evaluates retraining policies' triggers."
    )
    alert_check_seconds: float = Field(
        default=30, gt=0, description="How often beat evaluates alert rules."
    )
    drift_check_seconds: float = Field(
        default=60, gt=0, description="How often beat looks for drift schedules that are due."
    )
    drift_max_rows: int = Field(
        default=500_000,
        ge=1,
        description="Logged requests one drift report reads, the newest first; a report on a "
        "wider window says it was sampled.",
    )
    drift_min_rows: int = Field(
        default=30,
        ge=1,
        description="Rows a drift report needs for a verdict; fewer give insufficient_data.",
    )
    prediction_log_days: int = Field(
        default=30, ge=1, le=3650, description="Days prediction logs and feedback are kept."
    )
    rollup_days: int = Field(
        default=400, ge=1, le=3650, description="Days per-minute serving rollups are kept."
    )
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts or networks outbound webhooks may reach though private (JSON list).",
    )
    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    webhook_backoff_seconds: float = Field(default=30, gt=0, le=86400)
    webhook_backoff_cap_seconds: float = Field(default=3600, gt=0, le=86400)
    pipeline_max_task_timeout: int = Field(
        default=3600, ge=1, description="Longest timeout a pipeline task may ask for (seconds)."
    )
    image_builder: str = Field(
        default="", description="Container builder command (docker, podman) for serving images."
    )
    image_registry: str = Field(
        default="", description="Registry prefix serving images are pushed to, e.g. ghcr.io/acme."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    gateway_port: int = Field(default=8080, ge=1, le=65535)
    api_workers: int = Field(default=1, ge=1, le=64)
    api_worker_start_seconds: int = Field(
        default=120,
        gt=0,
        description="How long a new API worker may take to import and start before it is "
        "given up (on start-up and on a SIGHUP restart); uvicorn's own 5 s kills workers "
        "still importing on a loaded host.",
    )
    api_graceful_shutdown_seconds: int = Field(
        default=30,
        gt=0,
        description="How long a retiring API worker may spend finishing requests in flight.",
    )
    max_upload_bytes: int = Field(
        default=2 * 1024**3, ge=1, description="Largest dataset or artifact upload accepted."
    )
    max_dataset_rows: int = Field(
        default=2_000_000,
        ge=1,
        description="Most rows a dataset file may hold; a Parquet file is checked from its "
        "footer before it is decoded.",
    )
    max_dataset_uncompressed_bytes: int = Field(
        default=1024**3,
        ge=1,
        description="Largest size a dataset file may decode to (rows times column widths plus "
        "text); compressed Parquet pages can hold far more than the file's size.",
    )
    max_request_body_bytes: int = Field(
        default=16 * 1024**2,
        ge=1,
        description="Largest JSON body the API reads (uploads and webhooks have their own).",
    )
    max_prediction_body_bytes: int = Field(
        default=64 * 1024**2,
        ge=1,
        le=PREDICTION_BODY_CEILING,
        description="Largest predict / infer / explain body the gateway reads.",
    )
    gateway_token_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long the gateway trusts a token check; a revoked token stops "
        "working within this time.",
    )
    max_metrics_per_batch: int = Field(default=10_000, ge=1)
    token_last_used_resolution_seconds: int = Field(
        default=60,
        ge=0,
        description="Rewrite a token's last-used time at most this often, so reads stay reads.",
    )

    @model_validator(mode="after")
    def _visibility_outlasts_tasks(self) -> "Settings":
        if self.broker_visibility_timeout <= self.pipeline_max_task_timeout:
            raise ValueError(
                "FLYWHEEL_BROKER_VISIBILITY_TIMEOUT must be longer than "
                "FLYWHEEL_PIPELINE_MAX_TASK_TIMEOUT, or Redis redelivers running tasks"
            )
        return self

    @property
    def resolved_git_cache(self) -> Path:
        return (self.git_cache or self.home / "git-cache").resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'flywheel.db').resolve()}"

    @property
    def resolved_artifact_root(self) -> Path:
        root = self.artifact_root if self.artifact_root is not None else self.home / "artifacts"
        return root.resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
