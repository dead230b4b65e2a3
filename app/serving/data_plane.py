"""The data plane's routes as a plain ASGI layer in front of the gateway's FastAPI app:
`POST /serve/{deployment}/predict`, `POST /serve/{deployment}/explain` and the Open Inference
Protocol's `POST /v2/models/{deployment}/infer`.

Every prediction passes here, so it reads the body and writes the answer on bare ASGI
(`app.serving.asgi`): Starlette's routing, request and response objects and exception
middleware were 11% of the gateway's CPU at 1,500 requests/s. Everything else
(health, metrics, actual state) is the FastAPI app behind it.
"""

import json
import os
import re
import time
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

from app.ml.serving_contract import InputError, check_payload
from app.serving import protocol
from app.serving.asgi import (
    BodyTooLarge,
    ClientGone,
    declared_length,
    read_body,
    refuse_method,
    send_json,
)
from app.serving.protocol import Reply
from app.serving.routing import Lane, choose, stand_in
from app.serving.served import Answer, Served

if TYPE_CHECKING:
    from app.serving.gateway import Gateway

RETRY_SOON = {"Retry-After": "1"}
ROUTES = re.compile(
    r"/(?:serve/(?P<served>[^/]+)/(?P<kind>predict|explain)|v2/models/(?P<model>[^/]+)/infer)"
)


class DataPlane:
    """Added with `app.add_middleware(DataPlane, gateway=...)`."""

    def __init__(self, app: ASGIApp, gateway: "Gateway") -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = ROUTES.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await refuse_method(send)
            return
        headers = dict(reversed(scope["headers"]))  # a repeated header: its first value
        deployment = route["model"] or route["served"]
        served = self.gateway.served.get(deployment)
        if served is None or not served.public:  # checked before any of the body is read
            refusal = await self.gateway.access.refusal(headers.get(b"authorization"))
            if refusal is not None:
                reply = protocol.unauthorized(refusal)
                await send_json(send, reply.status, reply.body, reply.headers)
                return
        limit = self.gateway.settings.max_prediction_body_bytes
        try:
            body = await read_body(receive, limit, declared_length(scope["headers"]))
        except ClientGone:
            return
        except BodyTooLarge as exc:
            await send_json(send, 413, protocol.error_body("payload_too_large", str(exc)))
            return
        kind = "v2" if route["model"] else "flywheel" if route["kind"] == "predict" else "explain"
        reply = await serve(self.gateway, deployment, kind, headers, body)
        await send_json(send, reply.status, reply.body, reply.headers)


async def serve(
    gateway: "Gateway", deployment: str, kind: str, headers: dict[bytes, bytes], raw: bytes
) -> Reply:
    """One request: validated against the chosen variant's signature, mirrored to shadows,
    forwarded to a replica, measured. `kind`: flywheel (predict), v2 (OIP infer) or explain."""
    started = time.perf_counter()
    given_id = headers.get(b"x-request-id")
    request_id = given_id.decode("latin-1") if given_id else new_request_id()
    served = gateway.served.get(deployment)
    if served is None or not served.lanes:
        if gateway.known is None or deployment in gateway.known:
            message = f"deployment {deployment!r} is starting on this gateway; retry shortly"
            return protocol.error(503, "starting", message, request_id, headers=RETRY_SOON)
        message = f"deployment {deployment!r} is not served here"
        return protocol.error(404, "not_found", message, request_id)
    try:
        payload = json.loads(raw)
    except ValueError:
        return protocol.error(400, "invalid_json", "the body is not valid JSON", request_id)
    except RecursionError:
        message = "the body's JSON is nested too deeply; send rows of plain values"
        return protocol.error(400, "invalid_json", message, request_id)
    unit = _unit(served, headers, payload)
    lane = choose(deployment, served.lanes, unit, gateway.rng)
    try:
        if kind == "v2":
            payload = protocol.from_v2(payload)
        check_payload(payload, lane.signature)
    except InputError as exc:
        answer = Answer(422, {"error": {"code": "invalid_input", "message": exc.message}}, None)
        gateway._observe(served, lane, request_id, answer, started, None)
        return protocol.error(
            422, "invalid_input", exc.message, request_id, exc.details, _named(request_id, lane)
        )
    if kind == "explain":
        lane, answer = await _answer(gateway, served, lane, unit, payload, "/explain", None)
        body = {"request_id": request_id, "variant": lane.name, **answer.body}
        return Reply(answer.status, body, _named(request_id, lane, answer))
    wire = raw if kind == "flywheel" else None  # forwarded as received, not re-encoded
    for other in served.lanes:
        if other is not lane and (other.mode == "shadow" or other.mirror):
            gateway.spawn(gateway.mirror(served, other, payload, request_id, wire))
    lane, answer = await _answer(gateway, served, lane, unit, payload, "/predict", wire)
    gateway._observe(served, lane, request_id, answer, started, wire or payload)
    reply_headers = _named(request_id, lane, answer)
    if answer.status != 200:
        return Reply(answer.status, answer.body, reply_headers)
    body = {
        "request_id": request_id,
        "deployment": deployment,
        "variant": lane.name,
        "model": lane.model,
        "model_version": lane.version,
        **answer.body,
    }
    return Reply(200, protocol.to_v2(body, request_id) if kind == "v2" else body, reply_headers)


async def _answer(
    gateway: "Gateway",
    served: Served,
    lane: Lane,
    unit: str | None,
    payload: Any,
    path: str,
    raw: bytes | None,
) -> tuple[Lane, Answer]:
    """The chosen variant answers; when none of its replicas can (it was retired while the
    request waited, as the baseline is when a rollout completes, or none came up in time),
    a variant that serves takes the request instead, if its signature accepts the rows.
    A 503 only when no variant of the deployment can serve."""
    tried = [lane]
    answer = await gateway.forward(served, lane, payload, path, raw)
    while answer.unserved:
        gone = gateway.served.get(served.name) is not served  # deleted meanwhile
        others = [] if gone else [o for o in served.lanes if all(o is not t for t in tried)]
        fallback = stand_in(
            served.name, [o for o in others if _accepts(o, payload)], unit, gateway.rng
        )
        if fallback is None:
            names = ", ".join(t.name for t in tried)
            message = (
                f"no variant of {served.name!r} has a replica that can take the request "
                f"(tried {names}); retry shortly"
            )
            return lane, Answer(
                503, protocol.error_body("no_replica", message), None, unserved=True
            )
        tried.append(fallback)
        lane = fallback
        answer = await gateway.forward(served, lane, payload, path, raw)
    return lane, answer


def _accepts(lane: Lane, payload: Any) -> bool:
    try:
        check_payload(payload, lane.signature)
    except InputError:
        return False
    return True


def _named(request_id: str, lane: Lane, answer: Answer | None = None) -> dict[str, str]:
    """The reply's headers: the request, and the variant and version that answered it."""
    named = {
        "X-Request-Id": request_id,
        "X-Flywheel-Variant": lane.name,
        "X-Flywheel-Model-Version": f"{lane.model}/{lane.version}",
    }
    return named | RETRY_SOON if answer is not None and answer.unserved else named


def new_request_id() -> str:
    """32 hex characters, time-ordered like a UUIDv7: milliseconds since the epoch, then 80
    random bits. Prediction logs are indexed by request id; random ids (uuid4) land all over
    that index, and at half a million logged rows an insert of one second's logs cost five
    times what ordered ids cost (SQLite; PostgreSQL's B-trees behave the same way)."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def _unit(served: Served, headers: dict[bytes, bytes], payload: Any) -> str | None:
    """The experiment's unit (sticky assignment): a header of that name, else a body field."""
    if served.unit_key is None:
        return None
    header = headers.get(served.unit_key.lower().encode("latin-1"))
    if header is not None:
        return header.decode("latin-1")
    value = payload.get(served.unit_key) if isinstance(payload, dict) else None
    return None if value is None else str(value)
