"""Celery workers arrive with the orchestration issue; the package exists so the layout is whole."""
