from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from app.core.pagination import Page
from app.tracking.models import Run, RunStatus

KEY_PATTERN = r"^[A-Za-z0-9_\-./: ]+$"
Key = Annotated[str, StringConstraints(min_length=1, max_length=250, pattern=KEY_PATTERN)]


def _stringify(value: object) -> object:
    """Clients log numbers and booleans as params; store their text, as MLflow does."""
    if isinstance(value, bool | int | float) and not isinstance(value, str):
        return str(value)
    return value


ParamValue = Annotated[str, BeforeValidator(_stringify), StringConstraints(max_length=500)]
TagValue = Annotated[str, StringConstraints(max_length=500)]


class ExperimentCreate(BaseModel):
    name: str = Field(min_length=1, max_length=250, examples=["churn"])
    description: str = Field(default="", max_length=10_000)


class ExperimentUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=250)
    description: str | None = Field(default=None, max_length=10_000)
    archived: bool | None = Field(default=None, description="true archives, false restores.")


class ExperimentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None


class ExperimentPage(Page[ExperimentRead]):
    pass


class CodeVersion(BaseModel):
    repo: str = Field(min_length=1, max_length=2000, examples=["https://github.com/acme/churn"])
    commit: str = Field(
        min_length=1, max_length=64, examples=["9fceb02d0ae598e95dc970b74767f19372d61af8"]
    )
    branch: str | None = Field(default=None, max_length=250)
    dirty: bool = False


class RunInputSpec(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    dataset_version_id: int
    context: str = Field(default="training", min_length=1, max_length=50)


class RunCreate(BaseModel):
    experiment_id: int
    name: str = Field(default="", max_length=250)
    params: dict[Key, ParamValue] = Field(default_factory=dict, max_length=1000)
    tags: dict[Key, TagValue] = Field(default_factory=dict, max_length=1000)
    code_version: CodeVersion | None = None
    inputs: list[RunInputSpec] = Field(default_factory=list, max_length=1000)
    start_time: datetime | None = Field(default=None, description="Defaults to now.")


class RunUpdate(BaseModel):
    name: str | None = Field(default=None, max_length=250)
    status: RunStatus | None = Field(
        default=None, description="running → finished | failed | killed; a finished run stays so."
    )
    end_time: datetime | None = Field(default=None, description="Defaults to now when ending.")
    tags: dict[Key, TagValue] | None = Field(
        default=None, description="Merged into the run's tags; an empty string value keeps the key."
    )


class ParamsLog(BaseModel):
    params: dict[Key, ParamValue] = Field(min_length=1, max_length=1000)


class InputsLog(BaseModel):
    inputs: list[RunInputSpec] = Field(min_length=1, max_length=1000)


class RunRead(BaseModel):
    id: int
    experiment_id: int
    name: str
    status: RunStatus
    start_time: datetime
    end_time: datetime | None
    duration_ms: int | None
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float] = Field(description="The latest value of every metric key.")
    code_version: CodeVersion | None
    inputs: list[RunInputSpec]
    created_at: datetime


class RunPage(Page[RunRead]):
    pass


class MetricPoint(BaseModel):
    model_config = ConfigDict(from_attributes=True, allow_inf_nan=False)

    key: Key
    value: float
    step: int = Field(default=0, ge=0, le=2**62)
    timestamp: int | None = Field(
        default=None, ge=0, le=2**62, description="Milliseconds since the epoch; defaults to now."
    )


class MetricsLog(BaseModel):
    metrics: list[MetricPoint] = Field(min_length=1)


class MetricsLogged(BaseModel):
    written: int


class MetricPointRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step: int
    timestamp: int
    value: float


class MetricHistory(Page[MetricPointRead]):
    key: str


class RunSearch(BaseModel):
    experiment_ids: list[int] = Field(default_factory=list, max_length=1000)
    filter: str = Field(
        default="",
        max_length=10_000,
        examples=["metrics.accuracy > 0.9 AND params.model = 'rf' AND status = 'finished'"],
    )
    order_by: list[str] = Field(default_factory=list, max_length=10, examples=[["metrics.f1 DESC"]])
    page_size: int = Field(default=100, ge=1, le=1000)
    page_token: str | None = None


class ArtifactRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    path: str
    digest: str = Field(description="sha256 of the content.")
    size_bytes: int
    content_type: str
    created_at: datetime


class ArtifactList(BaseModel):
    items: list[ArtifactRead]


def run_read(run: Run) -> RunRead:
    return RunRead(
        id=run.id,
        experiment_id=run.experiment_id,
        name=run.name,
        status=run.status,
        start_time=run.start_time,
        end_time=run.end_time,
        duration_ms=run.duration_ms,
        params={p.key: p.value for p in run.params},
        tags={t.key: t.value for t in run.tags},
        metrics={m.key: m.value for m in run.latest_metrics},
        code_version=CodeVersion.model_validate(run.code_version) if run.code_version else None,
        inputs=[RunInputSpec.model_validate(i) for i in run.inputs],
        created_at=run.created_at,
    )
