"""Hand outbox rows to the broker: right after a commit (fast path, off the request in the API)
and from a relay loop."""

import logging
import queue
import threading
from collections.abc import Sequence

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import unit_of_work
from app.core.outbox import RELAY_BATCH, OutboxMessage, Publish, relay

logger = logging.getLogger(__name__)


def celery_publisher(celery: Celery) -> Publish:
    def publish(message: OutboxMessage) -> None:
        celery.send_task(
            message.task,
            kwargs=message.payload,
            task_id=f"outbox-{message.id}-{message.attempts}",
            retry=False,
        )

    return publish


class Dispatcher:
    """`background=True` hands kicks to one thread of its own, so a broker that is down (or
    slow to refuse a connection) never holds the request that enqueued the job: the rows are
    committed already, and this thread or the relay loop delivers them later."""

    def __init__(
        self, session_factory: sessionmaker[Session], publish: Publish, *, background: bool = False
    ) -> None:
        self.session_factory = session_factory
        self.publish = publish
        self.background = background
        self._kicks: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        self._kicker: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def relay_once(self, ids: Sequence[int] | None = None) -> int:
        with unit_of_work(self.session_factory) as session:
            return relay(session, self.publish, ids=ids)

    def kick(self, ids: Sequence[int]) -> None:
        """Best effort after a commit; if the broker is down the relay loop retries later."""
        if not self.background:
            self._kick_now(ids)
            return
        self._kicks.put(list(ids))
        with self._start_lock:
            if self._kicker is None:
                self._kicker = threading.Thread(
                    target=self._kick_forever, name="outbox-kick", daemon=True
                )
                self._kicker.start()

    def _kick_now(self, ids: Sequence[int]) -> None:
        try:
            self.relay_once(ids)
        except Exception:
            logger.warning("outbox: immediate dispatch failed; the relay will retry", exc_info=True)

    def _kick_forever(self) -> None:
        """One publish pass per batch of kicks that arrived meanwhile (in order)."""
        while True:
            ids = self._kicks.get()
            while not self._kicks.empty():
                ids.extend(self._kicks.get_nowait())
            for start in range(0, len(ids), RELAY_BATCH):
                self._kick_now(ids[start : start + RELAY_BATCH])


class RelayLoop:
    """Relay due outbox rows every `interval` seconds until stopped (beat and embedded mode)."""

    def __init__(self, dispatcher: Dispatcher, interval: float = 1.0) -> None:
        self.dispatcher = dispatcher
        self.interval = interval
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="outbox-relay", daemon=True)

    def start(self) -> "RelayLoop":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                while self.dispatcher.relay_once() and not self.stopping.is_set():
                    pass
            except Exception:
                logger.warning("outbox relay pass failed", exc_info=True)
            self.stopping.wait(self.interval)
