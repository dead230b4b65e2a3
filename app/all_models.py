"""Imports every domain's models so Base.metadata is complete (Alembic, tests)."""

from app.auth import models as auth_models
from app.core.db import Base
from app.core.outbox import OutboxMessage
from app.datasets import models as dataset_models
from app.deployments import models as deployment_models
from app.events import models as event_models
from app.explain import models as explain_models
from app.monitoring import models as monitoring_models
from app.pipelines import models as pipeline_models
from app.registry import models as registry_models
from app.sources import models as source_models
from app.subscriptions import models as subscription_models
from app.tracking import models as tracking_models
from app.training import models as training_models

__all__ = [
    "Base",
    "OutboxMessage",
    "auth_models",
    "dataset_models",
    "deployment_models",
    "event_models",
    "explain_models",
    "monitoring_models",
    "pipeline_models",
    "registry_models",
    "source_models",
    "subscription_models",
    "tracking_models",
    "training_models",
]
