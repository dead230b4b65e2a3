"""One model version in its own process: `python -m app.serving.replica --version-id N --port P`.

Loads the registered file once (digest and types verified) and answers the predict contract,
and explanations with the same loaded model. The gateway starts and stops replicas; a crash
of one takes no other model down with it.
"""

import argparse
import json
import time
import warnings
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.core.artifacts import ArtifactStore
from app.core.config import PREDICTION_BODY_CEILING, get_settings
from app.core.db import create_db_engine, create_session_factory
from app.core.errors import AppError
from app.ml.model_files import load_model
from app.ml.serving_contract import (
    InputError,
    features_from_payload,
    frame_from_payload,
    matrix_from_payload,
    predict,
)
from app.registry.models import ModelVersion, RegisteredModel
from app.serving import server
from app.serving.asgi import (
    BodyTooLarge,
    ClientGone,
    declared_length,
    read_body,
    refuse_method,
    send_json,
)
from app.serving.protocol import error_body as _error_body


@dataclass
class Loaded:
    model: Any
    signature: dict[str, Any]
    name: str
    version: int
    background: dict[str, Any] | None
    explainer: Any = None  # built on the first explain request
    takes_matrix: bool = False  # answers a float matrix exactly as the same rows in a frame


def load(version_id: int) -> Loaded:
    settings = get_settings()
    engine = create_db_engine(settings.resolved_database_url)
    with create_session_factory(engine)() as session:
        version = session.get(ModelVersion, version_id)
        if version is None or version.signature is None:
            raise SystemExit(f"model version {version_id} does not exist or has no signature")
        registered = session.get(RegisteredModel, version.model_id)
        path = ArtifactStore(settings.resolved_artifact_root).path_for_digest(
            version.artifact_digest
        )
        model = load_model(path, digest=version.artifact_digest, types=version.artifact_types or [])
        loaded = Loaded(
            model,
            version.signature,
            registered.name if registered else "",
            version.version,
            version.background_sample,
        )
    engine.dispose()
    loaded.takes_matrix = takes_matrix(loaded)
    return loaded


def takes_matrix(loaded: Loaded) -> bool:
    """Whether the model answers a plain matrix as it answers a frame, shown on its own
    background rows: then numeric requests skip the frame. A model that selects columns by
    name fails or differs here and keeps frames."""
    sample = loaded.background
    if not sample or not sample.get("rows"):
        return False
    payload = {"dataframe_split": {"columns": sample["columns"], "data": sample["rows"]}}
    try:
        matrix = matrix_from_payload(payload, loaded.signature)
        if matrix is None:
            return False
        frame = frame_from_payload(payload, loaded.signature)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(
                predict(loaded.model, matrix, loaded.signature)
                == predict(loaded.model, frame, loaded.signature)
            )
    except Exception:
        return False


def _error(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    return JSONResponse(_error_body(code, message, details), status)


def infer(loaded: Loaded, body: bytes) -> tuple[int, dict[str, Any]]:
    """The predict contract on one request body: (status, answer)."""
    started = time.perf_counter()
    try:
        payload = json.loads(body)
        features = features_from_payload(payload, loaded.signature, matrix=loaded.takes_matrix)
    except ValueError as exc:  # InputError is one
        if isinstance(exc, InputError):
            return 422, _error_body("invalid_input", exc.message, exc.details)
        return 400, _error_body("invalid_json", "the body is not valid JSON")
    try:
        result = predict(loaded.model, features, loaded.signature)
    except Exception as exc:  # the model's own failure: a 500 the gateway can count
        return 500, _error_body("model_error", f"{type(exc).__name__}: {exc}"[:500])
    result["model_latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return 200, result


class Predict:
    """`POST /predict` on bare ASGI in front of the Starlette app (health, explain): every
    prediction takes this route, and Starlette's routing, request and response were 12% of a
    replica's CPU on one-row requests."""

    def __init__(self, app: Starlette, loaded: Loaded) -> None:
        self.app = app
        self.loaded = loaded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict":
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await refuse_method(send)
            return
        try:
            declared = declared_length(scope["headers"])
            body = await read_body(receive, PREDICTION_BODY_CEILING, declared)
        except ClientGone:
            return
        except BodyTooLarge as exc:
            await send_json(send, 413, {"detail": str(exc)})
            return
        await send_json(send, *infer(self.loaded, body))


def build_app(loaded: Loaded) -> Predict:
    signature = loaded.signature

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ready"})

    def explain_sync(payload: Any) -> JSONResponse:
        # imported here, not at start: SHAP and plotting would add seconds to every cold start
        from app.explain import service as explaining
        from app.explain.schemas import ExplainRequest

        try:
            body = ExplainRequest.model_validate(payload)
        except ValidationError as exc:
            return _error(422, "invalid_request", str(exc.errors()[0]["msg"]), exc.errors())
        try:
            frame = explaining.request_frame(signature, body.payload())
            if loaded.explainer is None:
                loaded.explainer = explaining.build_explainer(
                    loaded.model, signature, loaded.background
                )
            result, outputs = explaining.explain_frame(loaded.explainer, frame, body)
        except AppError as exc:
            return _error(exc.status_code, exc.code, exc.message, exc.details)
        read = explaining.read_explanation(loaded.name, loaded.version, result, outputs, body)
        return JSONResponse(read.model_dump(mode="json"))

    async def explain(request: Request) -> JSONResponse:
        """SHAP values with the model this replica serves (computed off the event loop)."""
        payload = await request.json()
        return await anyio.to_thread.run_sync(explain_sync, payload)

    routes = [Route("/health", health), Route("/explain", explain, methods=["POST"])]
    return Predict(Starlette(routes=routes), loaded)


def serve(version_id: int, port: int) -> None:
    # a matrix for a model fitted on a frame: sklearn would warn on every request
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    server.run(build_app(load(version_id)), "127.0.0.1", port, "warning")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--version-id", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve(args.version_id, args.port)


if __name__ == "__main__":
    main()
