"""Embedded mode: a Celery worker and the outbox relay inside the `flywheel up` process.

With the in-memory broker (memory://) the API, the relay and the worker share one process,
so a first run needs no Redis. The worker runs the same tasks as `celery -A workers worker`.
"""

import logging
import threading
from dataclasses import dataclass
from typing import Any

from celery.beat import EmbeddedService
from celery.worker import WorkController

from app.core.dispatch import Dispatcher, RelayLoop, celery_publisher
from workers.celery_app import app as celery_app
from workers.celery_app import context

logger = logging.getLogger(__name__)


@dataclass
class EmbeddedWorker:
    worker: WorkController
    thread: threading.Thread
    relay: RelayLoop
    beat: Any

    def stop(self) -> None:
        self.beat.stop()
        self.relay.stop()
        self.worker.stop(in_sighandler=False)
        self.thread.join(timeout=10)


def start(concurrency: int = 2) -> EmbeddedWorker:
    worker = WorkController(
        app=celery_app,
        pool="threads",
        concurrency=concurrency,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        hostname="embedded@flywheel",
        loglevel="INFO",
    )
    thread = threading.Thread(target=worker.start, name="embedded-worker", daemon=True)
    thread.start()
    relay = RelayLoop(Dispatcher(context().session_factory, celery_publisher(celery_app))).start()
    schedule = context().settings.home.resolve() / "beat-schedule"
    beat = EmbeddedService(celery_app, thread=True, schedule_filename=str(schedule))
    beat.start()
    logger.info("embedded worker (%d threads), beat and the outbox relay started", concurrency)
    return EmbeddedWorker(worker=worker, thread=thread, relay=relay, beat=beat)
