"""The global importance job: explain a sample of the reference data, store mean |SHAP|.

Not one transaction: the row is marked running in a short one, SHAP runs with no transaction
open (it can take minutes on the model-agnostic path), and the result is stored in another.
"""

import logging

from app.core.db import utcnow
from app.core.errors import AppError
from app.core.jobs import JobContext, job
from app.datasets.models import DatasetVersion
from app.explain import importance
from app.explain.models import FeatureImportance, ImportanceStatus
from app.registry.models import ModelVersion

logger = logging.getLogger(__name__)


@job(importance.IMPORTANCE_JOB, transactional=False)
def compute_importance(ctx: JobContext, importance_id: int) -> None:
    with ctx.transaction() as session:
        row = session.get(FeatureImportance, importance_id, with_for_update=True)
        if row is None or row.status in (ImportanceStatus.ready, ImportanceStatus.failed):
            return  # done already (delivery is at least once) or deleted with its version
        version = session.get(ModelVersion, row.model_version_id)
        dataset = (
            session.get(DatasetVersion, row.dataset_version_id)
            if row.dataset_version_id is not None
            else None
        )
        if version is None or dataset is None or dataset.digest != row.data_digest:
            row.status = ImportanceStatus.failed
            row.status_message = "the version or its reference data no longer exists"
            return
        row.status = ImportanceStatus.running
        inputs = importance.ImportanceInputs(
            importance_id=row.id,
            version=version,
            dataset_uri=dataset.uri,
            dataset_format=dataset.format,
            sample_rows=row.sample_rows,
            seed=row.seed,
            max_evals=row.max_evals,
        )
    try:
        result = importance.compute_importance(ctx.artifacts, inputs)
    except AppError as exc:
        _fail(ctx, importance_id, exc.message)
        return
    with ctx.transaction() as session:
        row = session.get(FeatureImportance, importance_id, with_for_update=True)
        if row is None:
            return
        for key, value in result.items():
            setattr(row, key, value)
        row.status = ImportanceStatus.ready
        row.status_message = None
        row.computed_at = utcnow()
    logger.info(
        "importance %s: %s rows in %.2fs",
        importance_id,
        result["sample_size"],
        result["duration_seconds"],
    )


def _fail(ctx: JobContext, importance_id: int, message: str) -> None:
    with ctx.transaction() as session:
        row = session.get(FeatureImportance, importance_id, with_for_update=True)
        if row is not None:
            row.status = ImportanceStatus.failed
            row.status_message = message
