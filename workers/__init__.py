"""Celery workers: `celery -A workers worker`, `celery -A workers beat`.

Tasks are generated from the job registry (`app.core.jobs.JOBS`): each opens its own unit of
work, calls the domain's job function, and commits.
"""

from workers.celery_app import app, context

__all__ = ["app", "context"]
