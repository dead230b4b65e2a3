from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.pagination import Page
from app.registry.models import ModelVersion, PackageStatus, RegisteredModel, VersionStatus

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
ALIAS_PATTERN = r"^[a-z][a-z0-9_\-]*$"
ColumnType = Literal["integer", "float", "boolean", "string", "datetime"]


class ModelCreate(BaseModel):
    name: str = Field(min_length=1, max_length=250, pattern=NAME_PATTERN, examples=["churn"])
    description: str = Field(default="", max_length=10_000)
    tags: dict[str, str] = Field(default_factory=dict, max_length=100)


class ModelUpdate(BaseModel):
    description: str | None = Field(default=None, max_length=10_000)
    tags: dict[str, str] | None = Field(default=None, max_length=100)


class ModelRead(BaseModel):
    id: int
    name: str
    description: str
    tags: dict[str, str]
    latest_version: int
    aliases: dict[str, int] = Field(description="alias -> version number")
    created_at: datetime
    updated_at: datetime


class ModelPage(Page[ModelRead]):
    pass


class SignatureColumn(BaseModel):
    name: str = Field(min_length=1, max_length=250)
    type: ColumnType
    nullable: bool = False


class SignatureInput(BaseModel):
    inputs: list[SignatureColumn] = Field(min_length=1, max_length=10_000)


class VersionOptions(BaseModel):
    """What a new version is, besides its file."""

    dataset_version_id: int | None = Field(
        default=None,
        description="Training data: gives the signature and the drift reference profile.",
    )
    target: str | None = Field(
        default=None, max_length=250, description="Label column, left out of the signature."
    )
    signature: SignatureInput | None = Field(
        default=None, description="Input columns, when no training dataset version is linked."
    )
    parent_version: int | None = Field(
        default=None, description="Warm start: the version this one continues."
    )
    metrics: dict[str, float] | None = Field(
        default=None, description="Defaults to the run's latest metrics."
    )
    description: str = Field(default="", max_length=10_000)
    tags: dict[str, str] = Field(default_factory=dict, max_length=100)


class VersionCreate(VersionOptions):
    """Register the model file a run logged as an artifact (saved with skops)."""

    run_id: int
    artifact_path: str = Field(min_length=1, max_length=1000, examples=["model.skops"])


class VersionUpdate(BaseModel):
    description: str | None = Field(default=None, max_length=10_000)
    tags: dict[str, str] | None = Field(default=None, max_length=100)


class VersionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    model: str
    version: int
    status: VersionStatus
    status_message: str | None
    description: str
    tags: dict[str, str]
    aliases: list[str]
    source: str
    run_id: int | None
    run_artifact_path: str | None
    dataset_version_id: int | None
    target: str | None
    parent_version: int | None
    flavor: str
    model_class: str | None
    artifact_digest: str
    artifact_uri: str
    artifact_size_bytes: int
    artifact_types: list[str] | None
    signature: dict[str, Any] | None
    metrics: dict[str, Any]
    compatibility: dict[str, Any] | None = Field(
        description="Against the champion at registration: identical, compatible or breaking."
    )
    package_status: PackageStatus | None
    package: dict[str, Any] | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class VersionPage(Page[VersionRead]):
    pass


class AliasSet(BaseModel):
    version: int = Field(ge=1, description="The version number the alias should point at.")


class AliasRead(BaseModel):
    alias: str
    version: int
    updated_at: datetime


class AliasMoveRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    alias: str
    from_version: int | None
    to_version: int | None
    actor: str | None
    created_at: datetime


class AliasMovePage(Page[AliasMoveRead]):
    pass


class LineageNode(BaseModel):
    id: str = Field(examples=["run:12"])
    type: Literal["dataset_version", "run", "model_version", "alias", "deployment"]
    label: str
    data: dict[str, Any]


class LineageEdge(BaseModel):
    source: str
    target: str
    relation: str = Field(examples=["trained_on", "produced", "warm_started_from", "points_to"])


class Lineage(BaseModel):
    nodes: list[LineageNode]
    edges: list[LineageEdge]


def model_read(model: RegisteredModel, numbers: dict[int, int]) -> ModelRead:
    """`numbers` maps version ids to version numbers for the model's aliases."""
    return ModelRead(
        id=model.id,
        name=model.name,
        description=model.description,
        tags=model.tags,
        latest_version=model.last_version,
        aliases={a.alias: numbers[a.version_id] for a in model.aliases},
        created_at=model.created_at,
        updated_at=model.updated_at,
    )


def version_read(
    version: ModelVersion, model: RegisteredModel, parent: int | None = None
) -> VersionRead:
    aliases = sorted(a.alias for a in model.aliases if a.version_id == version.id)
    return VersionRead.model_validate(
        {
            **{k: getattr(version, k) for k in VersionRead.model_fields if hasattr(version, k)},
            "model": model.name,
            "aliases": aliases,
            "parent_version": parent,
        }
    )
