"""Datasets and their immutable, content-addressed versions with a reference profile."""

import difflib
import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.artifacts import ArtifactStore, StagedObject
from app.core.config import Settings
from app.core.errors import Conflict, NotFound, PayloadTooLarge, Unprocessable
from app.core.pagination import PageParams, keyset_page
from app.datasets.models import Dataset, DatasetVersion
from app.datasets.schemas import DatasetCreate
from app.ml.profile import infer_schema, profile_frame
from app.ml.tabular import (
    TableFormat,
    TableFormatError,
    TableLimits,
    TableTooLarge,
    detect_format,
    read_table,
)

# The setting that raises each bound, named in the refusal so an operator knows what to change.
_LIMIT_SETTINGS = {
    "rows": "FLYWHEEL_MAX_DATASET_ROWS",
    "decoded_bytes": "FLYWHEEL_MAX_DATASET_UNCOMPRESSED_BYTES",
}


def create_dataset(session: Session, data: DatasetCreate) -> Dataset:
    if session.scalar(select(Dataset.id).where(Dataset.name == data.name)) is not None:
        raise Conflict(f"a dataset named {data.name!r} already exists")
    dataset = Dataset(name=data.name, description=data.description)
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset_or_raise(session: Session, name: str) -> Dataset:
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        raise NotFound(unknown_dataset(session, name))
    return dataset


def unknown_dataset(session: Session, name: str, shown: int = 20) -> str:
    """Says what exists, and the names close to a misspelt one."""
    names = list(session.scalars(select(Dataset.name).order_by(Dataset.name)))
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    more = ", ..." if len(names) > shown else ""
    known = f"datasets: {', '.join(names[:shown])}{more}" if names else "there are no datasets"
    return f"dataset {name!r} does not exist{hint}; {known}; create one with POST /api/v1/datasets"


def list_datasets(session: Session, page: PageParams) -> tuple[Sequence[Dataset], str | None]:
    return keyset_page(session, select(Dataset), Dataset.id, page)


def list_versions(
    session: Session, name: str, page: PageParams
) -> tuple[Sequence[DatasetVersion], str | None]:
    dataset = get_dataset_or_raise(session, name)
    stmt = select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
    return keyset_page(session, stmt, DatasetVersion.id, page)


def get_version_or_raise(session: Session, name: str, version: int) -> DatasetVersion:
    dataset = get_dataset_or_raise(session, name)
    found = session.scalar(
        select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset.id, DatasetVersion.version == version
        )
    )
    if found is None:
        raise NotFound(f"dataset {name!r} has no version {version}")
    return found


def read_version(store: ArtifactStore, version: DatasetVersion) -> pd.DataFrame:
    """A stored version's rows (its format was checked when it was added)."""
    fmt: TableFormat = "parquet" if version.format == "parquet" else "csv"
    return read_table(store.resolve(version.uri), fmt)


def latest_version_id(session: Session, dataset_id: int) -> int | None:
    return session.scalar(
        select(func.max(DatasetVersion.id)).where(DatasetVersion.dataset_id == dataset_id)
    )


def latest_version(session: Session, name: str) -> DatasetVersion | None:
    """The newest version of the dataset so named; None when it does not exist or has none."""
    return session.scalar(
        select(DatasetVersion)
        .join(Dataset)
        .where(Dataset.name == name)
        .order_by(DatasetVersion.version.desc())
        .limit(1)
    )


def latest_version_or_raise(session: Session, name: str) -> DatasetVersion:
    get_dataset_or_raise(session, name)
    found = latest_version(session, name)
    if found is None:
        raise NotFound(
            f"dataset {name!r} has no versions yet; upload one first "
            f"(POST /api/v1/datasets/{name}/versions)"
        )
    return found


def upload_limits(settings: Settings) -> TableLimits:
    return TableLimits(
        max_rows=settings.max_dataset_rows,
        max_decoded_bytes=settings.max_dataset_uncompressed_bytes,
    )


def add_version(
    session: Session,
    store: ArtifactStore,
    name: str,
    staged: StagedObject,
    *,
    limits: TableLimits | None,
    filename: str | None = None,
    source_uri: str | None = None,
) -> tuple[DatasetVersion, bool]:
    """Register staged bytes as a version; identical content returns the existing version.

    The staged bytes are published only once they read as a table within `limits` (None for
    rows Flywheel wrote itself); refused or duplicate bytes are discarded.
    """
    try:
        return _add_version(session, store, name, staged, limits, filename, source_uri)
    finally:
        store.discard(staged)


def _add_version(
    session: Session,
    store: ArtifactStore,
    name: str,
    staged: StagedObject,
    limits: TableLimits | None,
    filename: str | None,
    source_uri: str | None,
) -> tuple[DatasetVersion, bool]:
    dataset = session.scalar(select(Dataset).where(Dataset.name == name).with_for_update())
    if dataset is None:
        raise NotFound(unknown_dataset(session, name))
    existing = session.scalar(
        select(DatasetVersion).where(
            DatasetVersion.dataset_id == dataset.id, DatasetVersion.digest == staged.digest
        )
    )
    if existing is not None:
        return existing, False
    if staged.size_bytes == 0:
        raise Unprocessable("the file is empty; upload a CSV with a header row or a Parquet file")
    fmt = detect_format(staged.path, filename)
    try:
        frame = read_table(staged.path, fmt, limits)
    except TableTooLarge as exc:
        setting = _LIMIT_SETTINGS[exc.limit]
        raise PayloadTooLarge(
            f"the {fmt} file is too large to ingest: {exc} (the limit is the setting {setting})",
            code="dataset_too_large",
            details={"limit": exc.limit, "setting": setting},
        ) from exc
    except TableFormatError as exc:
        raise Unprocessable(
            f"could not read the {fmt} file: {exc}", code="malformed_dataset"
        ) from exc
    number = (
        session.scalar(
            select(func.max(DatasetVersion.version)).where(DatasetVersion.dataset_id == dataset.id)
        )
        or 0
    ) + 1
    stored = store.publish(staged)
    version = DatasetVersion(
        dataset_id=dataset.id,
        version=number,
        digest=stored.digest,
        format=fmt,
        uri=stored.uri,
        source_uri=source_uri,
        size_bytes=stored.size_bytes,
        rows=len(frame),
        schema={"columns": infer_schema(frame)},
        profile=profile_frame(frame),
    )
    session.add(version)
    session.flush()
    return version, True


def add_frame_version(
    session: Session, store: ArtifactStore, name: str, frame: pd.DataFrame
) -> DatasetVersion:
    """Keep rows Flywheel selected itself (a production sample, a training window) as a
    version of `name`, created on first use, so what used them is traced by digest."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    data = buffer.getvalue()
    if session.scalar(select(Dataset.id).where(Dataset.name == name)) is None:
        create_dataset(session, DatasetCreate(name=name))
    staged = store.stage_chunks([data], max_bytes=len(data) + 1)
    version, _ = add_version(session, store, name, staged, limits=None, filename=f"{name}.parquet")
    return version


def stage_from_uri(store: ArtifactStore, uri: str, *, max_bytes: int) -> tuple[StagedObject, str]:
    """Take a file already on the artifact store (a path relative to its root)."""
    path = store.resolve(uri)
    if not path.is_file():
        raise Unprocessable(f"uri {uri!r} does not name a file on the artifact store")
    return store.stage_file(Path(path), max_bytes=max_bytes), path.name
