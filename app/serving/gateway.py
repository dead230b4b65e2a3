"""The data plane: `POST /serve/{deployment}/predict` and the Open Inference Protocol.

A reconcile loop reads the desired state (deployments) from the database and starts or stops
replica processes to match; requests are validated against the variant's signature, routed by
weight (sticky by unit key), mirrored to shadow variants, and balanced over ready replicas by
least outstanding requests.
"""

import asyncio
import contextlib
import logging
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from app.core.config import Settings
from app.core.db import create_db_engine, create_session_factory
from app.deployments.models import Deployment
from app.ml.serving_contract import InputError, frame_from_payload
from app.registry.models import ModelVersion, RegisteredModel
from app.serving.routing import Lane, Replica, choose, least_outstanding

logger = logging.getLogger(__name__)
READY_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    name: str
    generation: int
    unit_key: str | None
    min_replicas: int
    lanes: list[Lane]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)


class Gateway:
    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.served: dict[str, Served] = {}
        self.rng = random.Random()  # noqa: S311 - traffic splitting, not security
        self.http = httpx.AsyncClient(timeout=30)

    # -- desired state -> actual state ----------------------------------------------------------

    def desired(self) -> dict[str, Served]:
        with self.session_factory() as session:
            deployments = session.scalars(
                select(Deployment).options(selectinload(Deployment.variants))
            )
            wanted = {}
            for d in deployments:
                lanes = []
                for v in d.variants:
                    version = session.get(ModelVersion, v.model_version_id)
                    model = session.get(RegisteredModel, version.model_id) if version else None
                    if version is None or model is None or version.signature is None:
                        continue
                    lanes.append(
                        Lane(
                            v.name,
                            v.weight,
                            v.mode.value,
                            version.id,
                            version.version,
                            model.name,
                            version.signature,
                        )
                    )
                wanted[d.name] = Served(
                    d.name, d.generation, d.unit_key, d.autoscaling["min_replicas"], lanes
                )
        return wanted

    async def reconcile(self) -> None:
        wanted = await asyncio.to_thread(self.desired)
        for name in list(self.served):
            if name not in wanted or wanted[name].generation != self.served[name].generation:
                self.stop(self.served.pop(name))
        for name, target in wanted.items():
            if name not in self.served:
                self.served[name] = target
                for lane in target.lanes:
                    for _ in range(max(1, target.min_replicas)):
                        await self.start_replica(target, lane)
        for served in self.served.values():
            await self.replace_crashed(served)

    async def start_replica(self, served: Served, lane: Lane) -> Replica:
        port = _free_port()
        process = subprocess.Popen(  # noqa: S603 - our own replica module
            [
                sys.executable,
                "-m",
                "app.serving.replica",
                "--version-id",
                str(lane.version_id),
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        replica = Replica(port=port)
        lane.replicas.append(replica)
        served.processes[port] = process
        asyncio.get_running_loop().create_task(self._await_ready(replica, process))
        return replica

    async def _await_ready(self, replica: Replica, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if (
                    await self.http.get(f"http://127.0.0.1:{replica.port}/health")
                ).status_code == 200:
                    replica.ready = True
                    return
            await asyncio.sleep(0.05)

    async def replace_crashed(self, served: Served) -> None:
        for lane in served.lanes:
            for replica in list(lane.replicas):
                process = served.processes.get(replica.port)
                if process is not None and process.poll() is not None:
                    lane.replicas.remove(replica)
                    served.processes.pop(replica.port)
                    logger.warning(
                        "replica %s of %s/%s exited; replacing it",
                        replica.port,
                        served.name,
                        lane.name,
                    )
                    await self.start_replica(served, lane)

    def stop(self, served: Served) -> None:
        for process in served.processes.values():
            process.terminate()
        for process in served.processes.values():
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()

    async def close(self) -> None:
        for served in self.served.values():
            self.stop(served)
        self.served.clear()
        await self.http.aclose()

    # -- requests -----------------------------------------------------------------------------

    async def forward(self, lane: Lane, payload: Any) -> tuple[int, dict[str, Any]]:
        deadline = time.monotonic() + READY_TIMEOUT
        while (replica := least_outstanding(lane.replicas, self.rng)) is None:
            if time.monotonic() > deadline:
                return 503, {
                    "error": {
                        "code": "no_replica",
                        "message": f"variant {lane.name} has no ready replica",
                    }
                }
            await asyncio.sleep(0.02)
        replica.in_flight += 1
        try:
            response = await self.http.post(
                f"http://127.0.0.1:{replica.port}/predict", json=payload
            )
        except httpx.TransportError:
            replica.ready = False  # it died under us; the reconcile loop replaces it
            return 503, {
                "error": {"code": "replica_unavailable", "message": "the replica went away; retry"}
            }
        finally:
            replica.in_flight -= 1
        replica.served += 1
        return response.status_code, response.json()


def _unit(served: Served, request: Request, payload: Any) -> str | None:
    if served.unit_key is None:
        return None
    header = request.headers.get(served.unit_key)
    if header is not None:
        return header
    value = payload.get(served.unit_key) if isinstance(payload, dict) else None
    return None if value is None else str(value)


def create_gateway(
    settings: Settings, session_factory: sessionmaker[Session] | None = None, interval: float = 2.0
) -> FastAPI:
    factory = session_factory or create_session_factory(
        create_db_engine(settings.resolved_database_url)
    )
    gateway = Gateway(settings, factory)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                try:
                    await gateway.reconcile()
                except Exception:
                    logger.exception("reconcile failed")
                await asyncio.sleep(interval)

        task = asyncio.get_running_loop().create_task(loop())
        yield
        task.cancel()
        await gateway.close()

    app = FastAPI(title="Flywheel gateway", lifespan=lifespan)
    app.state.gateway = gateway

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, Any]:
        return {"ready": True, "deployments": sorted(gateway.served)}

    @app.post("/serve/{deployment}/predict")
    async def serve_predict(deployment: str, request: Request) -> JSONResponse:
        return await _serve(gateway, deployment, request)

    return app


async def _serve(gateway: Gateway, deployment: str, request: Request) -> JSONResponse:
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    served = gateway.served.get(deployment)
    if served is None or not served.lanes:
        return _error(404, "not_found", f"deployment {deployment!r} is not served here", request_id)
    try:
        payload = await request.json()
    except ValueError:
        return _error(400, "invalid_json", "the body is not valid JSON", request_id)
    lane = choose(deployment, served.lanes, _unit(served, request, payload), gateway.rng)
    try:
        frame_from_payload(payload, lane.signature)
    except InputError as exc:
        return _error(422, "invalid_input", exc.message, request_id, exc.details)
    for shadow in (s for s in served.lanes if s.mode == "shadow"):
        asyncio.get_running_loop().create_task(gateway.forward(shadow, payload))
    status, body = await gateway.forward(lane, payload)
    headers = {
        "X-Request-Id": request_id,
        "X-Flywheel-Variant": lane.name,
        "X-Flywheel-Model-Version": f"{lane.model}/{lane.version}",
    }
    if status != 200:
        return JSONResponse(body, status_code=status, headers=headers)
    body = {
        "request_id": request_id,
        "deployment": deployment,
        "variant": lane.name,
        "model": lane.model,
        "model_version": lane.version,
        **body,
    }
    return JSONResponse(body, headers=headers)


def _error(
    status: int, code: str, message: str, request_id: str, details: Any = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers={"X-Request-Id": request_id})
