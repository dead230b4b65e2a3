"""Feedback: ground truth that arrives after the prediction, joined to it by request id."""

from sqlalchemy.orm import Session

from app.core.db import upsert, utcnow
from app.deployments import service as deployments
from app.deployments.schemas import FeedbackAccepted, FeedbackBatch, FeedbackItem
from app.monitoring import repository
from app.monitoring.models import Feedback


def record_feedback(
    session: Session, deployment: str, body: FeedbackItem | FeedbackBatch
) -> FeedbackAccepted:
    """Idempotent per request id: sending feedback again replaces it (the latest label wins).
    Feedback may arrive before its prediction log is written; it joins once that lands."""
    deployments.get_or_raise(session, deployment)
    items = body.items if isinstance(body, FeedbackBatch) else [body]
    latest = {item.request_id: item for item in items}
    rows = [
        {
            "deployment": deployment,
            "request_id": item.request_id,
            "labels": item.labels
            if item.labels is not None
            else (None if item.label is None else [item.label]),
            "reward": item.reward,
            "created_at": utcnow(),
        }
        for item in latest.values()
    ]
    upsert(
        session, Feedback, rows, ["deployment", "request_id"], ["labels", "reward", "created_at"]
    )
    matched = repository.known_request_ids(session, deployment, list(latest))
    return FeedbackAccepted(accepted=len(rows), matched=len(matched))
