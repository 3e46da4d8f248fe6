"""Commit wake-ups: LISTEN/NOTIFY from the writer's transaction, and polling without it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from recorder.db.target import DatabaseTarget
from recorder.eventlog.wakeups import CommitWakeups
from recorder.eventlog.writer import EventWriter
from recorder.projection.projector import Projector
from tests.helpers import message_event, wait_until


@contextlib.asynccontextmanager
async def started(*components: object) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in components]  # type: ignore[attr-defined]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def listening(wakeups: CommitWakeups) -> None:
    await wait_until(lambda: wakeups.listening)


async def test_a_writer_commit_wakes_a_listener_on_another_connection(
    database: DatabaseTarget,
) -> None:
    wakeups = CommitWakeups(database, listen=True)
    calls: list[None] = []
    wakeups.subscribe(lambda: calls.append(None))
    writer = EventWriter(database, batch_wait_ms=0)
    async with started(wakeups, writer):
        await listening(wakeups)
        calls.clear()  # the catch-up call made on (re)connecting
        waiter = asyncio.create_task(wakeups.wait(30))
        await writer.put(message_event("conv-w", 1))
        assert await asyncio.wait_for(waiter, 10), "the commit was not announced"
        await wait_until(lambda: bool(calls))


async def test_a_notification_outside_a_commit_is_not_sent(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    wakeups = CommitWakeups(database, listen=True)
    async with started(wakeups):
        await listening(wakeups)
        seen = wakeups.generation
        async with db.transaction():
            await db.execute("SELECT pg_notify('recorder_log', '1')")
            await db.execute("SELECT 1")
        await wait_until(lambda: wakeups.generation > seen)
        seen = wakeups.generation
        tx = db.transaction()
        await tx.start()
        await db.execute("SELECT pg_notify('recorder_log', '2')")
        await tx.rollback()
        await asyncio.sleep(0.5)
        assert wakeups.generation == seen, "a rolled-back batch woke the readers"


async def test_a_lost_listening_connection_is_reopened(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    wakeups = CommitWakeups(database, listen=True, max_backoff_s=0.2)
    async with started(wakeups):
        await listening(wakeups)
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()")
        await wait_until(lambda: wakeups.reconnects >= 1 and wakeups.listening,
                         within_s=20)
        seen = wakeups.generation
        await db.execute("SELECT pg_notify('recorder_log', '3')")
        await wait_until(lambda: wakeups.generation > seen)


async def test_without_listen_nothing_is_heard_and_wait_times_out(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    wakeups = CommitWakeups(database, listen=False)  # behind a transaction-pooling PgBouncer
    async with started(wakeups):
        await db.execute("SELECT pg_notify('recorder_log', '4')")
        assert not await wakeups.wait(0.3)
        assert wakeups.generation == 0 and not wakeups.listening


@pytest.mark.parametrize(("listen", "poll_s"), [(True, 30.0), (False, 0.05)])
async def test_a_projector_in_another_process_role_follows_by_notify_or_by_polling(
    database: DatabaseTarget, listen: bool, poll_s: float,
) -> None:
    # With LISTEN the projector looks at once even with a 30 s poll interval; without it,
    # its poll interval alone brings it to the head.
    wakeups = CommitWakeups(database, listen=listen)
    projector = Projector(database, poll_interval_s=poll_s, name=f"test-{listen}")
    wakeups.subscribe(projector.wake)
    writer = EventWriter(database, batch_wait_ms=0)  # no in-process listener to the projector
    async with started(wakeups, projector, writer):
        if listen:
            await listening(wakeups)
        await wait_until(lambda: projector.is_leader)
        await asyncio.sleep(0.2)  # idle: waiting on its poll interval
        seq = 10 if listen else 20
        await writer.put(message_event(f"conv-p{seq}", seq))
        await wait_until(lambda: projector.position >= writer.head > 0,
                         within_s=5)


async def test_a_commit_between_a_read_and_the_wait_is_not_missed() -> None:
    """A reader notes `generation` before it reads; a commit announced after that read but
    before it waits makes the wait return at once instead of sleeping out its poll."""
    wakeups = CommitWakeups(None, listen=False)
    noted = wakeups.generation
    wakeups.committed()  # announced while the reader was busy reading
    assert await asyncio.wait_for(wakeups.wait(30, since=noted), 1)
    noted = wakeups.generation
    assert not await wakeups.wait(0.05, since=noted), "nothing new: it waits out the timeout"
