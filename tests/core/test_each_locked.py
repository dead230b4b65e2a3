from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import unit_of_work
from app.core.jobs import each_locked
from app.events.models import Event
from tests.conftest import InlineJobs


def test_one_failing_row_rolls_back_alone_and_the_others_commit(
    jobs: InlineJobs, session_factory: sessionmaker[Session]
) -> None:
    with unit_of_work(session_factory) as session:
        events = [Event(type="t", subject=f"s{i}", payload={}) for i in range(3)]
        session.add_all(events)
        session.flush()
        ids = [e.id for e in events]

    def mark(session: Session, event: Any) -> None:
        event.payload = {"seen": True}
        if event.subject == "s1":
            raise RuntimeError("this one breaks")

    each_locked(jobs.ctx, Event, ids, mark, "marking")
    with session_factory() as session:
        rows = session.execute(select(Event.subject, Event.payload).where(Event.id.in_(ids)))
        seen = {row.subject: row.payload for row in rows.all()}
    assert seen == {"s0": {"seen": True}, "s1": {}, "s2": {"seen": True}}
