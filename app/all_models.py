"""Imports every domain's models so Base.metadata is complete (Alembic, tests)."""

from app.auth import models as auth_models
from app.core.db import Base
from app.datasets import models as dataset_models
from app.tracking import models as tracking_models

__all__ = ["Base", "auth_models", "dataset_models", "tracking_models"]
