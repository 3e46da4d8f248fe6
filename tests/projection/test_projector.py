"""The projector task: following the log, resuming, atomic batches, one projector at a time,
outages and the final catch-up on stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from recorder.db.target import DatabaseTarget
from recorder.errors import ProjectionConflictError, ProjectionError
from recorder.eventlog.writer import EventWriter
from recorder.projection.fold import load_position
from recorder.projection.projector import Projector
from tests.helpers import wait_until
from tests.projection_helpers import append_changes, content, project, record, upsert


@contextlib.asynccontextmanager
async def running(projector: Projector) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def saved_position(db: asyncpg.Connection) -> int | None:
    value = await db.fetchval(
        "SELECT position FROM projection_positions WHERE name = 'conversations'")
    return None if value is None else int(value)


async def test_follows_a_growing_log_woken_by_the_writer(database: DatabaseTarget,
                                                         db: asyncpg.Connection) -> None:
    writer = EventWriter(database, batch_wait_ms=0.5)
    projector = Projector(database, poll_interval_s=5.0)  # only the wake-up makes it quick
    writer.add_listener(lambda _: projector.wake())
    writer_stop = asyncio.Event()
    writer_task = asyncio.create_task(writer.run(writer_stop))
    try:
        async with running(projector):
            for wave in range(3):
                await writer.put(record(upsert("c1", 1000 + wave, skill=str(wave))))
                for sequence in range(wave * 10, wave * 10 + 10):
                    await writer.put(record(content("c1", sequence)))
                await writer.wait_for_head(11 * (wave + 1))
                await projector.wait_for_position(11 * (wave + 1), timeout_s=2.0)
                assert await db.fetchval("SELECT count(*) FROM messages") == 10 * (wave + 1)
                assert await db.fetchval("SELECT skill_id FROM conversations") == str(wave)
    finally:
        writer_stop.set()
        await writer_task
    assert projector.last_applied_at is not None and projector.lag_s is not None
    assert projector.lag_events == 0 and await saved_position(db) == 33


async def test_resumes_from_its_saved_position(database: DatabaseTarget,
                                               db: asyncpg.Connection) -> None:
    await append_changes(database, [content("c1", s) for s in range(5)])
    first = await project(database)
    assert (first.position, first.stats.events) == (5, 5)
    await append_changes(database, [content("c1", s) for s in range(5, 8)])
    second = await project(database)
    assert (second.position, second.stats.events) == (8, 3)  # only the new events
    assert await db.fetchval("SELECT count(*) FROM messages") == 8


async def test_a_failed_batch_moves_neither_rows_nor_position(database: DatabaseTarget,
                                                              db: asyncpg.Connection) -> None:
    await append_changes(database, [upsert("c1", 1000), content("c1", 0)])
    await project(database)
    await db.execute("""
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.text = 'poison' THEN RAISE EXCEPTION 'refused by the test'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse();
    """)
    # One batch: a new state, a fine message, then the poisoned one.
    await append_changes(database, [upsert("c1", 2000, state="CLOSE"), content("c1", 1),
                                    content("c1", 2, "poison")])
    projector = Projector(database)
    with pytest.raises(ProjectionError, match=r"cannot apply events 3\.\.5: refused by the test"):
        await projector.run(asyncio.Event())
    assert await saved_position(db) == 2
    assert await db.fetchval("SELECT count(*) FROM messages") == 1
    assert await db.fetchval("SELECT state FROM conversations") == "OPEN"

    await db.execute("DROP TRIGGER refuse ON messages")
    assert (await project(database)).position == 5
    assert await db.fetchval("SELECT count(*) FROM messages") == 3
    assert await db.fetchval("SELECT state FROM conversations") == "CLOSE"


async def test_two_projectors_the_second_fails_on_the_compare_and_set(
        database: DatabaseTarget, db: asyncpg.Connection) -> None:
    await append_changes(database, [content("c1", s) for s in range(3)])
    one, two = Projector(database), Projector(database)
    first, second = await asyncpg.connect(database.dsn), await asyncpg.connect(database.dsn)
    try:
        one.position = await load_position(first)
        two.position = await load_position(second)
        assert await one.step(first)
        with pytest.raises(ProjectionConflictError, match="expected saved position 0, found 3"):
            await two.step(second)
    finally:
        await first.close()
        await second.close()
    assert await db.fetchval("SELECT count(*) FROM messages") == 3


async def test_a_second_running_projector_stays_passive(database: DatabaseTarget,
                                                        db: asyncpg.Connection) -> None:
    await append_changes(database, [content("c1", s) for s in range(3)])
    leader, spare = Projector(database), Projector(database)
    async with running(leader):
        await leader.wait_for_position(3)
        async with running(spare):
            await asyncio.sleep(0.3)
            assert leader.is_leader and not spare.is_leader
            await append_changes(database, [content("c1", 3)])
            await leader.wait_for_position(4)
    assert spare.stats.events == 0 and await saved_position(db) == 4


async def test_survives_a_lost_connection(database: DatabaseTarget,
                                          db: asyncpg.Connection) -> None:
    await append_changes(database, [content("c1", 0)])
    projector = Projector(database, max_backoff_s=0.2)
    async with running(projector):
        await projector.wait_for_position(1)
        await db.execute("""
            SELECT pg_terminate_backend(pid) FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid()""")
        await append_changes(database, [content("c1", 1)])
        await projector.wait_for_position(2, timeout_s=10)
    assert projector.stats.connections >= 2  # reconnected (with or without a failed query)
    assert await db.fetchval("SELECT count(*) FROM messages") == 2


async def test_stop_catches_up_with_what_was_committed(database: DatabaseTarget,
                                                       db: asyncpg.Connection) -> None:
    projector = Projector(database, poll_interval_s=10.0, batch_size=7)
    async with running(projector) as stop:
        await wait_until(lambda: projector.is_leader)
        await append_changes(database, [content("c1", s) for s in range(50)])
        stop.set()  # no wake-up, a long poll: only the final pass can pick these up
    assert projector.position == 50 and await saved_position(db) == 50
    assert await db.fetchval("SELECT count(*) FROM messages") == 50


async def test_refreshes_the_statistics_of_tables_that_outgrew_them(
        database: DatabaseTarget, db: asyncpg.Connection) -> None:
    """A projection growing from empty is ANALYZEd by the projector, not left to the planner's
    defaults until autovacuum's first pass; a table that did not grow is left alone."""
    for table in ("conversations", "dialogs", "participants", "messages", "receipts"):
        await db.execute(f"ANALYZE {table}")
    await append_changes(database, [upsert(f"s{i}", 1000, agents=["a1"]) for i in range(800)])
    projector = Projector(database, statistics_check_s=3600.0)
    connection = await projector._leader.acquire(asyncio.Event())
    assert connection is not None
    try:
        while await projector.step(connection):
            pass
        refreshed: list[str] = []

        async def outgrown() -> bool:  # the backends' counters reach pg_stat within ~1 s
            refreshed.extend(await projector.refresh_statistics(connection))
            return "participants" in refreshed

        deadline = asyncio.get_running_loop().time() + 15
        while not await outgrown():
            assert asyncio.get_running_loop().time() < deadline, refreshed
            await asyncio.sleep(0.2)
        # 800 conversations and dialogs (below the 1,000 changed rows left to autovacuum),
        # 1,600 participants; messages and receipts did not change.
        assert refreshed == ["participants"]
        assert projector.stats.analyzed == len(refreshed)
        analyzed = await db.fetchval(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables "
            "WHERE relname = 'participants' AND schemaname = current_schema()")
        assert analyzed
        assert await db.fetchval(
            "SELECT reltuples FROM pg_class WHERE oid = 'participants'::regclass") == 1600
        assert await projector.refresh_statistics(connection) == []  # up to date now
    finally:
        await projector._leader.close()
