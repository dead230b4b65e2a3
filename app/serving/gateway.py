"""The gateway: the process behind the data plane (its routes: `app.serving.data_plane`).

A reconcile loop reads the desired state (deployments) from the database and starts or stops
replica processes to match, changing weights in place so a rollout step costs no restart;
requests are validated against the variant's signature, routed by weight (sticky by unit
key), mirrored to shadow variants, and balanced over ready replicas by least outstanding
requests. What happens is measured (`app.serving.telemetry`) and written off the hot path.
"""

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, selectinload, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.config import Settings
from app.core.db import create_db_engine, create_session_factory, unit_of_work
from app.deployments.models import Deployment
from app.deployments.models import Replica as ReplicaRow
from app.registry.models import ModelVersion, RegisteredModel
from app.serving import protocol
from app.serving.access import TokenCache
from app.serving.autoscaler import Autoscaler
from app.serving.data_plane import DataPlane
from app.serving.hop import Hop, ReplicaGone
from app.serving.launcher import Launcher, ReplicaProcess
from app.serving.routing import Lane, Replica, least_outstanding
from app.serving.served import Answer, Served, describe
from app.serving.telemetry import Observation, Telemetry, write

logger = logging.getLogger(__name__)
READY_TIMEOUT = 60.0
FLUSH_SECONDS = 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wall(monotonic: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=time.monotonic() - monotonic)


class Gateway:
    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.served: dict[str, Served] = {}
        self.rng = random.Random()  # noqa: S311 - traffic splitting, not security
        self._hop: Hop | None = None
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.telemetry = Telemetry(self.id, session_factory.kw["bind"].dialect)
        self.background: set[asyncio.Task[None]] = set()
        self.launcher = Launcher()
        self.access = TokenCache(session_factory, settings.gateway_token_cache_seconds)
        # the deployments the last reconcile found in the database; None until it has run
        self.known: frozenset[str] | None = None

    @property
    def hop(self) -> Hop:
        """Connections to the replicas, made in the event loop that uses them."""
        if self._hop is None:
            self._hop = Hop(limit=64, timeout=30.0)
        return self._hop

    def spawn(self, work: Any) -> None:
        """Run a coroutine beside the request; held here so it is not collected midway."""
        task = asyncio.get_running_loop().create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

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
                            mirror=v.mirror,
                        )
                    )
                wanted[d.name] = Served(
                    d.id,
                    d.name,
                    d.generation,
                    d.unit_key,
                    d.autoscaling,
                    d.log_sample_rate,
                    lanes,
                    public=d.public,
                )
        return wanted

    async def reconcile(self) -> None:
        wanted = await asyncio.to_thread(self.desired)
        self.known = frozenset(wanted)
        for name in list(self.served):
            if name not in wanted:
                served = self.served.pop(name)
                for lane in served.lanes:
                    lane.retired = True  # requests it holds stop waiting; none starts a replica
                    self.telemetry.forget(name, lane.name)
                self.stop(served)
        for name, target in wanted.items():
            current = self.served.get(name)
            if current is None:
                self.served[name] = target
                for lane in target.lanes:
                    await self._open_lane(target, lane)
            elif current.generation != target.generation:
                current.public = target.public
                await self._converge(current, target)
        for served in self.served.values():
            await self.replace_crashed(served)
            await self.autoscale(served)
        self._report()

    def starting(self) -> list[str]:
        """Deployments not ready to answer yet: before the first reconcile, every one; after
        it, those with a lane whose replicas are all still starting (a replica that failed
        or outlived its start deadline no longer holds readiness back)."""
        if self.known is None:
            return ["(the first reconcile has not finished)"]
        now = time.monotonic()
        waiting = set(self.known) - set(self.served)
        for served in self.served.values():
            for lane in served.lanes:
                alive = [
                    r
                    for r in lane.replicas
                    if (p := served.processes.get(r.port)) is not None and p.poll() is None
                ]
                fresh = any(now - r.started_at < READY_TIMEOUT for r in alive)
                if alive and fresh and not any(r.ready for r in alive):
                    waiting.add(served.name)
        return sorted(waiting)

    async def _open_lane(self, served: Served, lane: Lane) -> None:
        served.scalers[lane.name] = Autoscaler.from_policy(served.autoscaling)
        for _ in range(served.autoscaling["min_replicas"]):
            await self.start_replica(served, lane)

    async def _converge(self, current: Served, target: Served) -> None:
        """Apply a changed deployment in place: a variant that still serves the same version
        keeps its warm replicas and only takes its new weight; others start or stop."""
        kept = {(lane.name, lane.version_id): lane for lane in current.lanes}
        rescale = current.autoscaling != target.autoscaling
        current.generation, current.unit_key = target.generation, target.unit_key
        current.autoscaling, current.log_sample_rate = target.autoscaling, target.log_sample_rate
        lanes = []
        for wanted in target.lanes:
            lane = kept.pop((wanted.name, wanted.version_id), None)
            if lane is None:
                lanes.append(wanted)
                await self._open_lane(current, wanted)
                continue
            lane.weight, lane.mode, lane.mirror = wanted.weight, wanted.mode, wanted.mirror
            if rescale:
                current.scalers[lane.name] = Autoscaler.from_policy(current.autoscaling)
            lanes.append(lane)
        for gone in kept.values():
            gone.retired = True
            self.telemetry.forget(current.name, gone.name)
            for replica in gone.replicas:
                process = current.processes.pop(replica.port, None)
                if process is not None:
                    process.terminate()  # uvicorn finishes the requests it holds, then exits
            gone.replicas.clear()
        current.lanes = lanes

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

    def _report(self) -> None:
        rows: list[dict[str, Any]] = []
        for served in self.served.values():
            for lane in served.lanes:
                ready = sum(r.ready for r in lane.replicas)
                in_flight = sum(r.in_flight for r in lane.replicas) + lane.waiting
                self.telemetry.load(
                    served.name, lane.name, ready, len(lane.replicas) - ready, in_flight
                )
                rows.extend(
                    {
                        "deployment_id": served.id,
                        "variant": lane.name,
                        "model_version_id": lane.version_id,
                        "gateway": self.id,
                        "port": r.port,
                        "pid": r.pid,
                        "state": "ready" if r.ready else "starting",
                        "started_at": _wall(r.started_at),
                        "ready_at": None if r.ready_at is None else _wall(r.ready_at),
                        "in_flight": r.in_flight,
                        "served": r.served,
                        "reported_at": datetime.now(UTC),
                    }
                    for r in lane.replicas
                )
        self.telemetry.replica_rows = rows

    async def start_replica(self, served: Served, lane: Lane) -> Replica:
        port = _free_port()
        started = time.monotonic()
        forked = await asyncio.to_thread(self.launcher.fork, lane.version_id, port)
        process = forked if forked is not None else self.launcher.spawn(lane.version_id, port)
        replica = Replica(port=port, started_at=started, pid=process.pid)
        lane.replicas.append(replica)
        served.processes[port] = process
        self.spawn(self._await_ready(served, lane, replica, process))
        return replica

    async def _await_ready(
        self, served: Served, lane: Lane, replica: Replica, process: ReplicaProcess
    ) -> None:
        """Ready when its health check answers; spawn-to-ready is the cold start, recorded."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(ReplicaGone, TimeoutError):
                status, _ = await self.hop.request(replica.port, "GET", "/health")
                if status == 200:
                    replica.ready_at = time.monotonic()
                    replica.ready = True
                    seconds = replica.ready_at - replica.started_at
                    lane.cold_starts.append(seconds)
                    del lane.cold_starts[:-100]
                    self.telemetry.cold_start(served.name, lane.name, seconds)
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

    async def flush(self) -> None:
        pending = self.telemetry.take()
        if not (pending.logs or pending.rollups or pending.replicas is not None):
            return
        await asyncio.to_thread(self._write, pending)

    def _write(self, pending: Any) -> None:
        with unit_of_work(self.session_factory) as session:
            write(session, self.id, pending)

    async def close(self) -> None:
        for served in self.served.values():
            self.stop(served)
        self.served.clear()
        self.launcher.close()
        if self._hop is not None:
            self._hop.close()
            self._hop = None
        self.telemetry.replica_rows = None
        with contextlib.suppress(Exception):  # best effort: the database may be gone too
            await self.flush()
            with unit_of_work(self.session_factory) as session:
                session.execute(delete(ReplicaRow).where(ReplicaRow.gateway == self.id))

    # -- requests -----------------------------------------------------------------------------

    async def _ready_replica(self, served: Served, lane: Lane) -> Replica | None:
        """Wait for a ready replica; the waiting request counts as load for the scaler."""
        lane.waiting += 1
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while (replica := least_outstanding(lane.replicas, self.rng)) is None:
                if time.monotonic() > deadline or lane.retired:
                    return None
                if not lane.replicas:  # stopped meanwhile: start one for this request
                    await self.start_replica(served, lane)
                await asyncio.sleep(0.02)
            return replica
        finally:
            lane.waiting -= 1

    async def forward(
        self,
        served: Served,
        lane: Lane,
        payload: Any,
        path: str = "/predict",
        raw: bytes | None = None,
    ) -> Answer:
        """Predictions are idempotent, so a request whose replica dies under it is retried
        once on another (or a freshly started) replica."""
        lane.requests += 1
        content = raw if raw is not None else json.dumps(payload).encode()  # as received
        if not lane.replicas and not lane.retired:  # scaled to zero: wait for a cold start
            await self.start_replica(served, lane)
        for attempt in (1, 2):
            replica = await self._ready_replica(served, lane)
            if replica is None:
                message = f"variant {lane.name} has no ready replica"
                body = {"error": {"code": "no_replica", "message": message}}
                return Answer(503, body, None, unserved=True)
            replica.in_flight += 1
            try:
                status, answered = await self.hop.request(replica.port, "POST", path, content)
            except (TimeoutError, ReplicaGone):
                self._drop(served, lane, replica)
                if attempt == 1:
                    continue
                message = "the replica went away twice; retry"
                body = {"error": {"code": "replica_unavailable", "message": message}}
                return Answer(503, body, replica.port)
            finally:
                replica.in_flight -= 1
            replica.served += 1
            try:
                body = json.loads(answered)
            except ValueError:
                message = f"the replica answered {status} without a JSON body"
                body = {"error": {"code": "replica_error", "message": message}}
            return Answer(status, body, replica.port)
        raise AssertionError("unreachable")

    def _drop(self, served: Served, lane: Lane, replica: Replica) -> None:
        """A replica that refused a connection is gone: stop routing to it at once."""
        replica.ready = False
        if replica in lane.replicas:
            lane.replicas.remove(replica)
        process = served.processes.pop(replica.port, None)
        if process is not None and process.poll() is None:
            process.kill()

    async def mirror(
        self, served: Served, lane: Lane, payload: Any, request_id: str, raw: bytes | None
    ) -> None:
        """A shadow copy: answered and recorded, never returned."""
        started = time.perf_counter()
        answer = await self.forward(served, lane, payload, raw=raw)
        logged = raw if raw is not None else payload
        self._observe(served, lane, request_id, answer, started, logged, shadow=True)

    def _observe(
        self,
        served: Served,
        lane: Lane,
        request_id: str,
        answer: Answer,
        started: float,
        inputs: Any,
        shadow: bool = False,
    ) -> None:
        """`inputs`: the request's JSON value, or its body's bytes when forwarded as received."""
        body = answer.body
        outputs = None
        if answer.status == 200:
            outputs = {k: body[k] for k in ("predictions", "probabilities") if k in body}
        self.telemetry.observe(
            Observation(
                served.name,
                lane.name,
                lane.version_id,
                request_id,
                answer.status,
                (time.perf_counter() - started) * 1000,
                body.get("model_latency_ms") if answer.status == 200 else None,
                shadow,
                answer.replica,
            ),
            inputs=inputs,
            outputs=outputs if answer.status == 200 else body.get("error"),
            sample_rate=served.log_sample_rate,
        )


def create_gateway(
    settings: Settings, session_factory: sessionmaker[Session] | None = None, interval: float = 2.0
) -> FastAPI:
    factory = session_factory or create_session_factory(
        create_db_engine(settings.resolved_database_url)
    )
    gateway = Gateway(settings, factory)

    async def every(seconds: float, step: Any, what: str) -> None:
        while True:
            try:
                await step()
            except Exception:
                logger.exception("%s failed", what)
            await asyncio.sleep(seconds)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        gateway.launcher.start()  # in the loop's thread, which the replicas' lives hang on
        tasks = [
            loop.create_task(every(interval, gateway.reconcile, "reconcile")),
            loop.create_task(every(FLUSH_SECONDS, gateway.flush, "telemetry flush")),
        ]
        yield
        for task in tasks:
            task.cancel()
        await gateway.close()

    # FastAPI's own OpenTelemetry hook looked up the environment on every request (6% of the
    # gateway's CPU); the gateway reports through its Prometheus metrics instead
    telemetry_off = TelemetryConfig(tracing=False, metrics=False, logs=False)
    app = FastAPI(title="Flywheel gateway", lifespan=lifespan, telemetry=telemetry_off)
    app.state.gateway = gateway

    @app.exception_handler(StarletteHTTPException)
    async def one_error_shape(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        body = protocol.error_body(codes.get(exc.status_code, "http_error"), str(exc.detail))
        return JSONResponse(body, exc.status_code, exc.headers)

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        """200 once every deployment the database names has a ready replica (or gave up),
        so a load balancer sends nothing to a gateway that would answer 503s."""
        starting = gateway.starting()
        body = {"ready": not starting, "deployments": sorted(gateway.served), "starting": starting}
        return JSONResponse(body, 503 if starting else 200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(gateway.telemetry.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/gateway/deployments/{deployment}")
    async def actual_state(deployment: str, request: Request) -> JSONResponse:
        """What this gateway actually runs: replicas, load, cold starts, scaling decisions
        (process ids and ports: for token holders only, public deployment or not)."""
        authorization = request.headers.get("authorization", "").encode("latin-1")
        refusal = await gateway.access.refusal(authorization)
        if refusal is not None:
            reply = protocol.unauthorized(refusal)
            return JSONResponse(reply.body, reply.status, reply.headers)
        served = gateway.served.get(deployment)
        if served is None:
            message = f"deployment {deployment!r} is not served here"
            reply = protocol.error(404, "not_found", message, "")
            return JSONResponse(reply.body, reply.status, reply.headers)
        return JSONResponse(describe(served))

    app.add_middleware(DataPlane, gateway=gateway)  # the prediction routes, ahead of FastAPI
    return app
