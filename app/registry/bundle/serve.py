"""Serve one registered model over HTTP with Flywheel's predict contract.

Shipped inside a serving bundle next to model.skops, manifest.json, model_files.py and
serving_contract.py; needs only the pinned requirements.txt, not Flywheel itself.

    python serve.py --host 0.0.0.0 --port 8080
    POST /predict  {"rows": [{...}]} or {"dataframe_split": {"columns": [...], "data": [[...]]}}

With FLYWHEEL_SERVE_TOKEN set (in the environment, never on the command line), POST /predict
needs `Authorization: Bearer <that token>`; a request without it is refused before its body
is read.
"""

import argparse
import hmac
import json
import os
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from model_files import load_model
from serving_contract import InputError, frame_from_payload, predict

HERE = Path(__file__).resolve().parent
MAX_BODY = 64 * 1024 * 1024


class ModelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], manifest: dict[str, Any]) -> None:
        super().__init__(address, PredictHandler)
        self.manifest = manifest
        self.model = load_model(
            HERE / manifest["artifact"], digest=manifest["digest"], types=manifest["types"]
        )


class PredictHandler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per error only
        return

    def _send(self, status: int, body: dict[str, Any], request_id: str = "") -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if request_id:
            self.send_header("X-Request-Id", request_id)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, details: Any = None) -> None:
        self._send(status, {"error": {"code": code, "message": message, "details": details}})

    def do_GET(self) -> None:
        if self.path in ("/health", "/v2/health/ready", "/v2/health/live"):
            manifest = self.server.manifest
            self._send(
                200, {"status": "ok", "model": manifest["model"], "version": manifest["version"]}
            )
        else:
            self._error(404, "not_found", f"no route {self.path}; use POST /predict")

    def do_POST(self) -> None:
        if self.path != "/predict":
            self._error(404, "not_found", f"no route {self.path}; use POST /predict")
            return
        length = int(self.headers.get("Content-Length") or 0)
        token = os.environ.get("FLYWHEEL_SERVE_TOKEN", "")
        if token and not hmac.compare_digest(
            self.headers.get("Authorization", "").encode(), f"Bearer {token}".encode()
        ):
            self.close_connection = True  # the body stays unread
            self._error(401, "unauthorized", "send 'Authorization: Bearer <FLYWHEEL_SERVE_TOKEN>'")
            return
        if length > MAX_BODY:
            self._error(413, "payload_too_large", f"the body is larger than {MAX_BODY} bytes")
            return
        request_id = self.headers.get("X-Request-Id") or uuid.uuid4().hex
        started = time.perf_counter()
        try:
            payload = json.loads(self.rfile.read(length) or b"null")
            manifest = self.server.manifest
            frame = frame_from_payload(payload, manifest["signature"])
            result = predict(self.server.model, frame, manifest["signature"])
        except json.JSONDecodeError as exc:
            self._error(400, "invalid_json", f"the body is not valid JSON: {exc}")
            return
        except InputError as exc:
            self._error(422, "invalid_input", exc.message, exc.details)
            return
        body = {
            "request_id": request_id,
            "model": manifest["model"],
            "model_version": manifest["version"],
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            **result,
        }
        self._send(200, body, request_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 - a container listens on all interfaces
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    manifest = json.loads((HERE / "manifest.json").read_text())
    server = ModelServer((args.host, args.port), manifest)
    print(
        f"serving {manifest['model']} v{manifest['version']} on {args.host}:{args.port}", flush=True
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
