"""Hand outbox rows to the broker: right after a commit (fast path) and from a relay loop."""

import logging
import threading
from collections.abc import Sequence

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import unit_of_work
from app.core.outbox import OutboxMessage, Publish, relay

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
    def __init__(self, session_factory: sessionmaker[Session], publish: Publish) -> None:
        self.session_factory = session_factory
        self.publish = publish

    def relay_once(self, ids: Sequence[int] | None = None) -> int:
        with unit_of_work(self.session_factory) as session:
            return relay(session, self.publish, ids=ids)

    def kick(self, ids: Sequence[int]) -> None:
        """Best effort after a commit; if the broker is down the relay loop retries later."""
        try:
            self.relay_once(ids)
        except Exception:
            logger.warning("outbox: immediate dispatch failed; the relay will retry", exc_info=True)


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
