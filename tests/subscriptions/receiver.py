"""A real HTTP endpoint that receives outbound webhooks, answering as told, and checks them."""

import base64
import hashlib
import hmac
import time
from typing import Any

from fastapi import FastAPI, Request, Response


class Receiver:
    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.received: list[dict[str, Any]] = []
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            self.received.append(
                {"headers": dict(request.headers), "body": await request.body(), "at": time.time()}
            )
            status, headers = self.answers.pop(0) if self.answers else (204, {})
            return Response(status_code=status, headers=headers)

        self.app = app

    @staticmethod
    def verified(got: dict[str, Any], secret: str) -> bool:
        """Standard Webhooks verification, written from the spec, not from our sender."""
        headers, body = got["headers"], got["body"]
        key = base64.b64decode(secret.removeprefix("whsec_"))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        return any(
            hmac.compare_digest(f"v1,{expected}", candidate)
            for candidate in headers["webhook-signature"].split()
        )
