"""The rows a retrain learns from: labelled production traffic (prediction logs joined with
feedback) or a dataset with a time column, cut by the policy's window and kept as an
immutable dataset version, so the run's lineage names exactly those rows."""

from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.artifacts import ArtifactStore
from app.core.errors import Unprocessable
from app.datasets import service as datasets
from app.datasets.models import DatasetVersion
from app.ml import signature, windows
from app.monitoring import service as monitoring
from app.monitoring.models import DriftReport
from app.monitoring.windows import Window
from app.registry.models import ModelVersion
from app.training.schemas import DataSpec

DRIFT_REPORT = "drift_report"  # a dynamic window that starts where drift reports turned
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TIME = "_time"  # when production rows were answered; never a model input
ERROR = "_error"  # the served model's error on the row: what dynamic windows watch


def input_columns(version: ModelVersion) -> list[str]:
    return [c["name"] for c in (version.signature or {}).get("inputs", [])]


def _row_error(prediction: Any, label: Any, regression: bool) -> float:
    if regression:
        try:
            return abs(float(prediction) - float(label))
        except (TypeError, ValueError):
            return float("nan")
    return 0.0 if str(prediction) == str(label) else 1.0


def production_rows(
    session: Session,
    deployment: str,
    version: ModelVersion,
    *,
    since: datetime,
    until: datetime,
    max_rows: int,
) -> pd.DataFrame:
    """Labelled rows the deployment answered (newest kept when the cap cuts), with the time
    they were answered and the error of the prediction then served."""
    assert version.target is not None
    columns = input_columns(version)
    regression = (version.signature or {}).get("output", {}).get("kind") == "regression"
    requests = monitoring.labelled_requests(
        session,
        deployment,
        Window(since, until, until - since),
        None,
        labelled_only=True,
        newest_first=True,
        limit=max_rows,
    )
    records: list[dict[str, Any]] = []
    for request in requests:
        inputs = monitoring.logged_rows(request.inputs)
        predictions = (request.outputs or {}).get("predictions") or []
        labels = request.labels or []
        if not (len(inputs) == len(labels) == len(predictions)):
            continue  # labels that do not line up with the rows answered are not evidence
        for row, label, prediction in zip(inputs, labels, predictions, strict=True):
            if label is None:
                continue
            records.append(
                {
                    **{c: row.get(c) for c in columns},
                    version.target: label,
                    TIME: request.created_at,
                    ERROR: _row_error(prediction, label, regression),
                }
            )
    frame = pd.DataFrame.from_records(
        records[:max_rows], columns=[*columns, version.target, TIME, ERROR]
    )
    return frame.iloc[::-1].reset_index(drop=True)  # oldest first


def _typed(frame: pd.DataFrame, version: ModelVersion) -> pd.DataFrame:
    """The served version's inputs typed as its signature says: logged JSON carries a
    datetime as text, which would otherwise come back as a category (a breaking change)."""
    return signature.conform(frame, (version.signature or {}).get("inputs", []))


def dataset_rows(session: Session, store: ArtifactStore, data: DataSpec) -> pd.DataFrame:
    """The latest version of the policy's dataset, its time column renamed to the common one."""
    assert data.dataset is not None
    latest = datasets.latest_version_or_raise(session, data.dataset)
    frame = datasets.read_version(store, latest)
    if data.time_column not in frame.columns:
        raise Unprocessable(
            f"dataset {data.dataset!r} v{latest.version} has no time column "
            f"{data.time_column!r}; its columns are {list(frame.columns)}"
        )
    frame = frame.rename(columns={data.time_column: TIME})
    if not pd.api.types.is_numeric_dtype(frame[TIME]):
        frame[TIME] = pd.to_datetime(frame[TIME], utc=True, errors="coerce")
    return frame.tail(data.max_rows).reset_index(drop=True)


def policy_rows(
    session: Session,
    store: ArtifactStore,
    data: DataSpec,
    deployment: str,
    version: ModelVersion,
    *,
    now: datetime,
    after: datetime | None = None,
) -> pd.DataFrame:
    """The rows a policy learns from; with `after` (the online cursor) only those that came
    strictly after it (the row at the cursor was learned already)."""
    if data.source == "dataset":
        frame = dataset_rows(session, store, data)
    else:
        frame = production_rows(
            session, deployment, version, since=after or EPOCH, until=now, max_rows=data.max_rows
        )
    frame = _typed(frame, version)
    return frame if after is None else frame[frame[TIME] > after]


def original_rows(
    session: Session, store: ArtifactStore, version: ModelVersion
) -> pd.DataFrame | None:
    """The served version's own training data, for windows that keep it."""
    if version.dataset_version_id is None:
        return None
    stored = session.get(DatasetVersion, version.dataset_version_id)
    if stored is None:
        return None
    frame = datasets.read_version(store, stored)
    wanted = [*input_columns(version), version.target]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise Unprocessable(
            f"the original training set (dataset version {stored.id}) lacks {missing}"
        )
    return _typed(frame[wanted], version)


def select_window(
    frame: pd.DataFrame,
    spec: dict[str, Any],
    *,
    target: str,
    now: datetime,
    original: pd.DataFrame | None,
) -> windows.Selection:
    if frame.empty:
        raise Unprocessable(
            "there are no labelled rows to learn from yet: send feedback for the deployment's "
            "predictions (POST .../feedback) or point the policy at a dataset"
        )
    if original is not None:
        original = original.copy()
        for column in frame.columns:
            if column not in original.columns and column != TIME:
                original[column] = float("nan")
    errors = ERROR if ERROR in frame.columns else None
    try:
        return windows.select(
            frame,
            spec,
            time_column=TIME,
            label_column=target,
            now=pd.Timestamp(now) if not pd.api.types.is_numeric_dtype(frame[TIME]) else None,
            original=original,
            errors=errors,
        )
    except ValueError as exc:
        raise Unprocessable(f"window: {exc}") from exc


def keep(
    session: Session,
    store: ArtifactStore,
    policy_name: str,
    rows: pd.DataFrame,
    *,
    time_column: str | None = None,
) -> DatasetVersion:
    """The selected rows as `<policy>-window` version N, without the bookkeeping columns.

    A dataset's own time column (`time_column`) stays, under its name: the rows are kept as
    the dataset had them, and the champion, if it takes that column, can still be judged on
    them; the train run leaves it out (see `retrain.start`)."""
    features = rows.drop(columns=[ERROR], errors="ignore")
    if time_column is not None:
        features = features.rename(columns={TIME: time_column})
    features = features.drop(columns=[TIME], errors="ignore")
    return datasets.add_frame_version(session, store, f"{policy_name}-window", features)


def since_drift_spec(body: dict[str, Any], loc: list[str | int]) -> dict[str, Any]:
    """`{"kind": "dynamic", "method": "drift_report", "min_rows", "max_rows"}` checked."""
    unknown = sorted(set(body) - {"kind", "method", "min_rows", "max_rows"})
    min_rows, max_rows = body.get("min_rows", 100), body.get("max_rows")
    problem = None
    if unknown:
        problem = f"unknown key(s) {unknown} for a drift_report window"
    elif isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 1:
        problem = f"min_rows must be a positive integer, got {min_rows!r}"
    elif max_rows is not None and (
        isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < min_rows
    ):
        problem = f"max_rows must be an integer of at least min_rows, got {max_rows!r}"
    if problem:
        raise Unprocessable(f"window: {problem}", details={"loc": loc})
    return {"kind": "dynamic", "method": DRIFT_REPORT, "min_rows": min_rows, "max_rows": max_rows}


def drift_start(session: Session, deployment_id: int) -> tuple[int, datetime] | None:
    """The first report of the latest unbroken run of drifted reports: where the data the
    served model no longer fits began (None when the latest report did not drift)."""
    reports = session.execute(
        select(DriftReport.id, DriftReport.window_start, DriftReport.dataset_drifted)
        .where(DriftReport.deployment_id == deployment_id, DriftReport.status == "ready")
        .order_by(DriftReport.id.desc())
        .limit(1000)
    ).all()
    first = None
    for report in reports:
        if not report.dataset_drifted:
            break
        first = (report.id, report.window_start)
    return first


def since_drift(
    frame: pd.DataFrame, spec: dict[str, Any], start: tuple[int, datetime] | None
) -> windows.Selection:
    """Rows since the drift began, at least min_rows and at most max_rows (the newest)."""
    ordered = frame.sort_values(TIME, kind="stable")
    if start is None:
        raise Unprocessable(
            "window: the latest drift report shows no dataset drift, so there is no drift "
            "start to learn from; use another window or request a drift report"
        )
    rows = ordered[ordered[TIME] >= pd.Timestamp(start[1])]
    clamped = None
    if len(rows) < spec["min_rows"]:
        rows, clamped = ordered.tail(spec["min_rows"]), "min_rows"
    elif spec["max_rows"] is not None and len(rows) > spec["max_rows"]:
        rows, clamped = rows.tail(spec["max_rows"]), "max_rows"
    info = {
        "spec": spec,
        "drift_report": start[0],
        "drift_started_at": start[1].isoformat(),
        "clamped": clamped,
        "rows": len(rows),
    }
    return windows.Selection(rows=rows, info=info)
