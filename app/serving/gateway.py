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
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from app.core.config import Settings
from app.core.db import create_db_engine, create_session_factory
from app.core.processes import die_with_parent
from app.deployments.models import Deployment
from app.ml.serving_contract import InputError, frame_from_payload
from app.registry.models import ModelVersion, RegisteredModel
from app.serving.autoscaler import Autoscaler
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
    autoscaling: dict[str, Any]
    lanes: list[Lane]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    scalers: dict[str, Autoscaler] = field(default_factory=dict)


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
                wanted[d.name] = Served(d.name, d.generation, d.unit_key, d.autoscaling, lanes)
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
                    target.scalers[lane.name] = Autoscaler.from_policy(target.autoscaling)
                    for _ in range(target.autoscaling["min_replicas"]):
                        await self.start_replica(target, lane)
        for served in self.served.values():
            await self.replace_crashed(served)
            await self.autoscale(served)

    async def autoscale(self, served: Served) -> None:
        now = time.monotonic()
        for lane in served.lanes:
            scaler = served.scalers.setdefault(
                lane.name, Autoscaler.from_policy(served.autoscaling)
            )
            in_flight = sum(r.in_flight for r in lane.replicas) + lane.waiting
            scaler.observe(now, in_flight, requested=lane.requests > 0)
            lane.requests = 0
            decision = scaler.decide(now, len(lane.replicas))
            if decision.desired == decision.current:
                continue
            lane.decisions.append({"at": time.time(), **asdict(decision)})
            del lane.decisions[:-100]
            logger.info("scale %s/%s: %s", served.name, lane.name, decision)
            for _ in range(decision.desired - decision.current):
                await self.start_replica(served, lane)
            idle = [r for r in reversed(lane.replicas) if r.in_flight == 0]
            for replica in idle[: max(0, decision.current - decision.desired)]:
                lane.replicas.remove(replica)
                process = served.processes.pop(replica.port)
                process.terminate()

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
            preexec_fn=die_with_parent,  # replicas never outlive their gateway
        )
        replica = Replica(port=port, started_at=time.monotonic())
        lane.replicas.append(replica)
        served.processes[port] = process
        asyncio.get_running_loop().create_task(self._await_ready(lane, replica, process))
        return replica

    async def _await_ready(
        self, lane: Lane, replica: Replica, process: subprocess.Popen[bytes]
    ) -> None:
        """Ready when its health check answers; spawn-to-ready is the cold start, recorded."""
        deadline = time.monotonic() + READY_TIMEOUT
        url = f"http://127.0.0.1:{replica.port}/health"
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if (await self.http.get(url)).status_code == 200:
                    replica.ready_at = time.monotonic()
                    replica.ready = True
                    lane.cold_starts.append(replica.ready_at - replica.started_at)
                    del lane.cold_starts[:-100]
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

    async def _ready_replica(self, served: Served, lane: Lane) -> Replica | None:
        """Wait for a ready replica; the waiting request counts as load for the scaler."""
        lane.waiting += 1
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while (replica := least_outstanding(lane.replicas, self.rng)) is None:
                if time.monotonic() > deadline:
                    return None
                if not lane.replicas:  # stopped meanwhile: start one for this request
                    await self.start_replica(served, lane)
                await asyncio.sleep(0.02)
            return replica
        finally:
            lane.waiting -= 1

    async def forward(self, served: Served, lane: Lane, payload: Any) -> tuple[int, dict[str, Any]]:
        """Predictions are idempotent, so a request whose replica dies under it is retried
        once on another (or a freshly started) replica."""
        lane.requests += 1
        if not lane.replicas:  # scaled to zero: this request waits for a cold start
            await self.start_replica(served, lane)
        for attempt in (1, 2):
            replica = await self._ready_replica(served, lane)
            if replica is None:
                message = f"variant {lane.name} has no ready replica"
                return 503, {"error": {"code": "no_replica", "message": message}}
            replica.in_flight += 1
            try:
                url = f"http://127.0.0.1:{replica.port}/predict"
                response = await self.http.post(url, json=payload)
            except httpx.TransportError:
                self._drop(served, lane, replica)
                if attempt == 1:
                    continue
                message = "the replica went away twice; retry"
                return 503, {"error": {"code": "replica_unavailable", "message": message}}
            finally:
                replica.in_flight -= 1
            replica.served += 1
            return response.status_code, response.json()
        raise AssertionError("unreachable")

    def _drop(self, served: Served, lane: Lane, replica: Replica) -> None:
        """A replica that refused a connection is gone: stop routing to it at once."""
        replica.ready = False
        if replica in lane.replicas:
            lane.replicas.remove(replica)
        process = served.processes.pop(replica.port, None)
        if process is not None and process.poll() is None:
            process.kill()


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

    @app.get("/gateway/deployments/{deployment}")
    async def actual_state(deployment: str) -> JSONResponse:
        """What this gateway actually runs: replicas, load, cold starts, scaling decisions."""
        served = gateway.served.get(deployment)
        if served is None:
            return _error(404, "not_found", f"deployment {deployment!r} is not served here", "")
        return JSONResponse(
            {
                "deployment": deployment,
                "generation": served.generation,
                "variants": [
                    {
                        "name": lane.name,
                        "model": lane.model,
                        "model_version": lane.version,
                        "weight": lane.weight,
                        "mode": lane.mode,
                        "replicas": [
                            {
                                "port": r.port,
                                "pid": served.processes[r.port].pid
                                if r.port in served.processes
                                else None,
                                "ready": r.ready,
                                "in_flight": r.in_flight,
                                "served": r.served,
                                "cold_start_seconds": None
                                if r.ready_at is None
                                else round(r.ready_at - r.started_at, 3),
                            }
                            for r in lane.replicas
                        ],
                        "cold_starts_seconds": [round(c, 3) for c in lane.cold_starts],
                        "scaling_decisions": lane.decisions[-20:],
                    }
                    for lane in served.lanes
                ],
            }
        )

    @app.post("/v2/models/{deployment}/infer")
    async def infer(deployment: str, request: Request) -> JSONResponse:
        """Open Inference Protocol: one input tensor per column, answered as output tensors."""
        return await _serve(gateway, deployment, request, protocol="v2")

    @app.post("/serve/{deployment}/predict")
    async def serve_predict(deployment: str, request: Request) -> JSONResponse:
        return await _serve(gateway, deployment, request)

    return app


def _from_v2(payload: Any) -> dict[str, Any]:
    """OIP inputs [{name, shape, datatype, data}] (one per column) as dataframe_split rows."""
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise InputError("an Open Inference Protocol body needs `inputs`: one tensor per column")
    columns, values = [], []
    for tensor in payload["inputs"]:
        if (
            not isinstance(tensor, dict)
            or "name" not in tensor
            or not isinstance(tensor.get("data"), list)
        ):
            raise InputError("each input needs `name` and `data` (a flat list, one value per row)")
        columns.append(str(tensor["name"]))
        values.append(tensor["data"])
    if len({len(v) for v in values}) > 1:
        raise InputError("every input tensor must have the same number of rows")
    return {
        "dataframe_split": {
            "columns": columns,
            "data": [list(row) for row in zip(*values, strict=True)],
        }
    }


def _to_v2(body: dict[str, Any], request_id: str) -> dict[str, Any]:
    outputs = [
        {
            "name": "predictions",
            "shape": [len(body["predictions"])],
            "datatype": "BYTES" if any(isinstance(p, str) for p in body["predictions"]) else "FP64",
            "data": body["predictions"],
        }
    ]
    if "probabilities" in body:
        flat = [p for row in body["probabilities"] for p in row]
        outputs.append(
            {
                "name": "probabilities",
                "shape": [len(body["probabilities"]), len(body.get("classes", []))],
                "datatype": "FP64",
                "data": flat,
            }
        )
    return {
        "model_name": body["deployment"],
        "model_version": str(body["model_version"]),
        "id": request_id,
        "outputs": outputs,
    }


async def _serve(
    gateway: Gateway, deployment: str, request: Request, protocol: str = "flywheel"
) -> JSONResponse:
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
        if protocol == "v2":
            payload = _from_v2(payload)
        frame_from_payload(payload, lane.signature)
    except InputError as exc:
        return _error(422, "invalid_input", exc.message, request_id, exc.details)
    for shadow in (s for s in served.lanes if s.mode == "shadow"):
        asyncio.get_running_loop().create_task(gateway.forward(served, shadow, payload))
    status, body = await gateway.forward(served, lane, payload)
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
    return JSONResponse(_to_v2(body, request_id) if protocol == "v2" else body, headers=headers)


def _error(
    status: int, code: str, message: str, request_id: str, details: Any = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers={"X-Request-Id": request_id})
