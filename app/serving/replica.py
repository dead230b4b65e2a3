"""One model version in its own process: `python -m app.serving.replica --version-id N --port P`.

Loads the registered file once (digest and types verified) and answers the predict contract.
The gateway starts and stops replicas; a crash of one takes no other model down with it.
"""

import argparse
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.core.artifacts import ArtifactStore
from app.core.config import get_settings
from app.core.db import create_db_engine, create_session_factory
from app.ml.model_files import load_model
from app.ml.serving_contract import InputError, frame_from_payload, predict
from app.registry.models import ModelVersion


def load(version_id: int) -> tuple[Any, dict[str, Any]]:
    settings = get_settings()
    engine = create_db_engine(settings.resolved_database_url)
    with create_session_factory(engine)() as session:
        version = session.get(ModelVersion, version_id)
        if version is None or version.signature is None:
            raise SystemExit(f"model version {version_id} does not exist or has no signature")
        path = ArtifactStore(settings.resolved_artifact_root).path_for_digest(
            version.artifact_digest
        )
        model = load_model(path, digest=version.artifact_digest, types=version.artifact_types or [])
        signature = version.signature
    engine.dispose()
    return model, signature


def build_app(model: Any, signature: dict[str, Any]) -> Starlette:
    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ready"})

    async def infer(request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            frame = frame_from_payload(await request.json(), signature)
        except InputError as exc:
            return JSONResponse(
                {
                    "error": {
                        "code": "invalid_input",
                        "message": exc.message,
                        "details": exc.details,
                    }
                },
                422,
            )
        try:
            result = predict(model, frame, signature)
        except Exception as exc:  # the model's own failure: a 500 the gateway can count
            message = f"{type(exc).__name__}: {exc}"[:500]
            return JSONResponse({"error": {"code": "model_error", "message": message}}, 500)
        result["model_latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return JSONResponse(result)

    return Starlette(routes=[Route("/health", health), Route("/predict", infer, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--version-id", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    model, signature = load(args.version_id)
    uvicorn.run(
        build_app(model, signature),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
