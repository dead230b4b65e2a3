"""Experiments and runs: lifecycle, write-once params, metric history, inputs and artifacts."""

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from app.core.artifacts import StoredObject, validate_relative_path
from app.core.db import utcnow
from app.core.errors import Conflict, NotFound, Unprocessable
from app.core.pagination import PageParams, keyset_page
from app.datasets.models import DatasetVersion
from app.tracking import metric_ingest, repository
from app.tracking.models import (
    Experiment,
    Metric,
    Run,
    RunArtifact,
    RunInput,
    RunParam,
    RunTag,
)
from app.tracking.schemas import (
    ExperimentCreate,
    ExperimentUpdate,
    MetricPoint,
    RunCreate,
    RunInputSpec,
    RunRead,
    RunSearch,
    RunUpdate,
)

# -- experiments -----------------------------------------------------------------------------


def create_experiment(session: Session, data: ExperimentCreate) -> Experiment:
    _ensure_experiment_name_free(session, data.name)
    experiment = Experiment(name=data.name, description=data.description)
    session.add(experiment)
    _flush_or_conflict(session, f"an experiment named {data.name!r} already exists")
    return experiment


def get_experiment_or_raise(session: Session, experiment_id: int) -> Experiment:
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise NotFound(f"experiment {experiment_id} does not exist")
    return experiment


def list_experiments(
    session: Session, page: PageParams, *, include_archived: bool = False, name: str | None = None
) -> tuple[Sequence[Experiment], str | None]:
    stmt = select(Experiment)
    if not include_archived:
        stmt = stmt.where(Experiment.archived_at.is_(None))
    if name is not None:
        stmt = stmt.where(Experiment.name == name)
    return keyset_page(session, stmt, Experiment.id, page)


def update_experiment(session: Session, experiment_id: int, data: ExperimentUpdate) -> Experiment:
    experiment = get_experiment_or_raise(session, experiment_id)
    if data.name is not None and data.name != experiment.name:
        _ensure_experiment_name_free(session, data.name)
        experiment.name = data.name
    if data.description is not None:
        experiment.description = data.description
    if data.archived is not None:
        archived = experiment.archived_at is not None
        if data.archived and not archived:
            experiment.archived_at = utcnow()
        elif not data.archived and archived:
            experiment.archived_at = None
    experiment.updated_at = utcnow()
    _flush_or_conflict(session, f"an experiment named {data.name!r} already exists")
    return experiment


def _ensure_experiment_name_free(session: Session, name: str) -> None:
    if session.scalar(select(Experiment.id).where(Experiment.name == name)) is not None:
        raise Conflict(f"an experiment named {name!r} already exists; pick another name")


def _flush_or_conflict(session: Session, message: str) -> None:
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        raise Conflict(message) from exc


# -- runs ------------------------------------------------------------------------------------


def create_run(session: Session, data: RunCreate) -> Run:
    experiment = get_experiment_or_raise(session, data.experiment_id)
    if experiment.archived_at is not None:
        raise Conflict(f"experiment {experiment.id} is archived; restore it to add runs")
    run = Run(
        experiment_id=experiment.id,
        name=data.name,
        start_time=data.start_time or utcnow(),
        code_version=data.code_version.model_dump() if data.code_version else None,
        params=[RunParam(key=k, value=v) for k, v in data.params.items()],
        tags=[RunTag(key=k, value=v) for k, v in data.tags.items()],
        inputs=_inputs(session, data.inputs),
    )
    session.add(run)
    session.flush()
    return run


def get_run_or_raise(session: Session, run_id: int) -> Run:
    run = session.scalar(
        select(Run)
        .where(Run.id == run_id)
        .options(
            selectinload(Run.params),
            selectinload(Run.tags),
            selectinload(Run.latest_metrics),
            selectinload(Run.inputs),
        )
    )
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    return run


def _run_exists_or_raise(session: Session, run_id: int) -> None:
    if session.scalar(select(Run.id).where(Run.id == run_id)) is None:
        raise NotFound(f"run {run_id} does not exist")


def list_runs(
    session: Session, page: PageParams, *, experiment_id: int | None = None
) -> tuple[Sequence[Run], str | None]:
    stmt = select(Run).options(
        selectinload(Run.params),
        selectinload(Run.tags),
        selectinload(Run.latest_metrics),
        selectinload(Run.inputs),
    )
    if experiment_id is not None:
        stmt = stmt.where(Run.experiment_id == experiment_id)
    return keyset_page(session, stmt, Run.id, page)


def update_run(session: Session, run_id: int, data: RunUpdate) -> Run:
    run = get_run_or_raise(session, run_id)
    if data.name is not None:
        run.name = data.name
    if data.tags:
        _merge_tags(run, data.tags)
    if data.status is not None and data.status != run.status:
        if run.status.terminal:
            raise Conflict(
                f"run {run.id} is already {run.status.value}; a finished, failed or killed run "
                "cannot change status"
            )
        end = data.end_time or utcnow()
        if end < run.start_time:
            raise Unprocessable(
                "end_time is before the run's start_time", details={"field": "end_time"}
            )
        run.status = data.status
        run.end_time = end
        run.duration_ms = int((end - run.start_time).total_seconds() * 1000)
    elif data.end_time is not None:
        raise Unprocessable("end_time can only be set together with a terminal status")
    session.flush()
    return run


def _merge_tags(run: Run, tags: dict[str, str]) -> None:
    existing = {tag.key: tag for tag in run.tags}
    for key, value in tags.items():
        if key in existing:
            existing[key].value = value
        else:
            run.tags.append(RunTag(key=key, value=value))


def log_params(session: Session, run_id: int, params: dict[str, str]) -> Run:
    """Params are write-once: the same value again is fine, a different one is a conflict."""
    run = get_run_or_raise(session, run_id)
    existing = {param.key: param.value for param in run.params}
    clashes = {
        k: {"logged": existing[k], "new": v} for k, v in params.items() if existing.get(k, v) != v
    }
    if clashes:
        keys = ", ".join(sorted(clashes))
        raise Conflict(
            f"params are write-once and already have other values: {keys}; log a new run instead",
            details=clashes,
        )
    for key, value in params.items():
        if key not in existing:
            run.params.append(RunParam(key=key, value=value))
    session.flush()
    return run


def log_inputs(session: Session, run_id: int, specs: list[RunInputSpec]) -> Run:
    run = get_run_or_raise(session, run_id)
    known = {item.dataset_version_id for item in run.inputs}
    run.inputs.extend(i for i in _inputs(session, specs) if i.dataset_version_id not in known)
    session.flush()
    return run


def _inputs(session: Session, specs: list[RunInputSpec]) -> list[RunInput]:
    ids = {spec.dataset_version_id for spec in specs}
    if not ids:
        return []
    found = set(session.scalars(select(DatasetVersion.id).where(DatasetVersion.id.in_(ids))))
    missing = sorted(ids - found)
    if missing:
        raise Unprocessable(
            f"dataset versions do not exist: {missing}", details={"dataset_version_ids": missing}
        )
    unique = {spec.dataset_version_id: spec for spec in specs}
    return [RunInput(dataset_version_id=i, context=s.context) for i, s in unique.items()]


# -- metrics ---------------------------------------------------------------------------------


def log_metrics(session: Session, run_id: int, points: list[MetricPoint], *, limit: int) -> int:
    return metric_ingest.log_metrics(session, run_id, points, limit=limit)


def metric_history(
    session: Session, run_id: int, key: str, page: PageParams
) -> tuple[Sequence[Metric], str | None]:
    _run_exists_or_raise(session, run_id)
    stmt = select(Metric).where(Metric.run_id == run_id, Metric.key == key)
    rows, next_token = keyset_page(session, stmt, Metric.id, page)
    if not rows and page.page_token is None:
        raise NotFound(f"run {run_id} has no metric named {key!r}")
    return rows, next_token


def search_runs(session: Session, query: RunSearch) -> tuple[list[RunRead], str | None]:
    return repository.search_runs(session, query)


# -- artifacts -------------------------------------------------------------------------------


def validate_artifact_path(path: str) -> str:
    return validate_relative_path(path, what="artifact path")


def record_artifact(
    session: Session, run_id: int, path: str, stored: StoredObject, content_type: str
) -> RunArtifact:
    """Point a run's artifact path at stored content; writing the same path again replaces it."""
    validate_artifact_path(path)
    _run_exists_or_raise(session, run_id)
    artifact = session.scalar(
        select(RunArtifact).where(RunArtifact.run_id == run_id, RunArtifact.path == path)
    )
    if artifact is None:
        artifact = RunArtifact(run_id=run_id, path=path)
        session.add(artifact)
    artifact.digest = stored.digest
    artifact.size_bytes = stored.size_bytes
    artifact.content_type = content_type
    artifact.created_at = utcnow()
    session.flush()
    return artifact


def get_artifact_or_raise(session: Session, run_id: int, path: str) -> RunArtifact:
    validate_artifact_path(path)
    _run_exists_or_raise(session, run_id)
    artifact = session.scalar(
        select(RunArtifact).where(RunArtifact.run_id == run_id, RunArtifact.path == path)
    )
    if artifact is None:
        raise NotFound(f"run {run_id} has no artifact at {path!r}")
    return artifact


def list_artifacts(
    session: Session, run_id: int, prefix: str | None = None
) -> Sequence[RunArtifact]:
    _run_exists_or_raise(session, run_id)
    stmt = select(RunArtifact).where(RunArtifact.run_id == run_id).order_by(RunArtifact.path)
    if prefix:
        stmt = stmt.where(RunArtifact.path.startswith(prefix, autoescape=True))
    return session.scalars(stmt).all()
