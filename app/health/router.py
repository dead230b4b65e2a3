from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from sqlalchemy import text

from app.core.errors import ErrorResponse, ServiceUnavailable
from app.core.observability import render_metrics

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up. Says nothing about its dependencies: see /readyz."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": ErrorResponse}})
def readyz(request: Request) -> Health:
    """Ready to serve: the database answers."""
    try:
        with request.app.state.session_factory() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        raise ServiceUnavailable(
            "the database is not reachable", details={"database": type(exc).__name__}
        ) from exc
    return Health(status="ok", checks={"database": "ok"})


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics() -> Response:
    """Prometheus exposition format."""
    body, content_type = render_metrics()
    return Response(content=body, media_type=content_type)
