from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.core.pagination import Page
from app.datasets.models import DatasetVersion


class DatasetCreate(BaseModel):
    name: str = Field(
        min_length=1, max_length=250, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", examples=["churn"]
    )
    description: str = Field(default="", max_length=10_000)


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str
    created_at: datetime


class DatasetPage(Page[DatasetRead]):
    pass


class ColumnSchema(BaseModel):
    name: str
    type: str = Field(description="integer | float | boolean | string | datetime")
    nullable: bool


class DatasetVersionRead(BaseModel):
    id: int
    dataset: str
    version: int
    digest: str = Field(description="sha256 of the file's bytes: the same content is one version.")
    format: str
    uri: str = Field(description="Location on the artifact store.")
    source_uri: str | None
    size_bytes: int
    rows: int
    schema_: list[ColumnSchema] = Field(alias="schema", serialization_alias="schema")
    profile: dict[str, Any] = Field(
        description="Per-column reference profile used by drift checks."
    )
    created_at: datetime
    created: bool = Field(
        default=False, description="false when identical content already existed as this version."
    )

    model_config = ConfigDict(populate_by_name=True)


class DatasetVersionPage(Page[DatasetVersionRead]):
    pass


def version_read(
    version: DatasetVersion, dataset_name: str, created: bool = False
) -> DatasetVersionRead:
    return DatasetVersionRead(
        id=version.id,
        dataset=dataset_name,
        version=version.version,
        digest=version.digest,
        format=version.format,
        uri=version.uri,
        source_uri=version.source_uri,
        size_bytes=version.size_bytes,
        rows=version.rows,
        schema_=[ColumnSchema.model_validate(c) for c in version.schema["columns"]],
        profile=version.profile,
        created_at=version.created_at,
        created=created,
    )
