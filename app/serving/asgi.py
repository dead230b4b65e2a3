"""Reading a request body and writing a JSON answer on bare ASGI, for the routes every
prediction takes (the gateway's data plane, a replica's /predict): Starlette's request and
response objects and routing cost more there than the work they wrap."""

import json
from typing import Any

from starlette.types import Message, Receive, Send


class ClientGone(Exception):
    """The client disconnected before its body arrived: nothing to answer."""


class BodyTooLarge(Exception):
    """The body is (or says it is) longer than the route takes; nothing more of it is read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request bodies are limited to {limit:,} bytes; send fewer rows")


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def read_body(receive: Receive, limit: int, declared: int | None = None) -> bytes:
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    chunks, size = [], 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_json(
    send: Send, status: int, body: Any, headers: dict[str, str] | None = None
) -> None:
    # rendered as Starlette's JSONResponse renders it
    content = json.dumps(
        body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode()
    fields = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": content})


async def refuse_method(send: Send) -> None:
    """A route that only takes POST, asked with another method: the one error shape."""
    error = {"code": "method_not_allowed", "message": "use POST", "details": None}
    await send_json(send, 405, {"error": error}, {"Allow": "POST"})
