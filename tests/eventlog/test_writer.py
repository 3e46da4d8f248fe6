"""The event log writer on real PostgreSQL: order, idempotence, rollbacks, leadership, tailing."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from recorder.db.target import DatabaseTarget
from recorder.eventlog.records import EventRecord
from recorder.eventlog.writer import AppendResult, EventWriter
from tests.helpers import assert_log_contiguous, message_event, wait_until
from tests.log_reader import EventLog

# A trigger that fails a row mid-transaction, after the batch has taken its positions.
POISON_TRIGGER = """
CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.payload->'event'->>'message' = 'poison' THEN
        RAISE EXCEPTION 'poisoned row %', NEW.dedupe_key USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER poison BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION poison();
"""

# Makes every batch's transaction slow, so commits overlap with readers.
SLOW_TRIGGER = """
CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(random() * 0.02); RETURN NULL; END $$;
CREATE TRIGGER slow AFTER INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION slow();
"""


@contextlib.asynccontextmanager
async def running(writer: EventWriter) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    await asyncio.sleep(0)
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def collect(writer: EventWriter) -> list[AppendResult]:
    results: list[AppendResult] = []
    writer.add_listener(results.append)
    return results


async def test_positions_follow_submission_order(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    writer = EventWriter(database, batch_size=300)
    async with running(writer):
        for sequence in range(2500):
            await writer.put(message_event("conv-a", sequence))
        await asyncio.wait_for(writer.wait_for_head(2500), 30)
    assert await assert_log_contiguous(db) == 2500
    rows = await db.fetch("SELECT position, sequence FROM events ORDER BY position")
    assert [r["sequence"] for r in rows] == list(range(2500))
    assert writer.stats.stored == 2500 and writer.stats.batches >= 9


@pytest.mark.parametrize("copies", [1, 2, 5, 20])
async def test_same_events_sent_many_times_are_stored_once(
    database: DatabaseTarget, db: asyncpg.Connection, copies: int
) -> None:
    originals = [message_event(f"conv-{i % 7}", i) for i in range(200)]
    deliveries = [e for e in originals for _ in range(copies)]
    random.Random(copies).shuffle(deliveries)
    writer = EventWriter(database, batch_size=128)
    results = collect(writer)
    async with running(writer):
        for event in deliveries:
            await writer.put(event)
        await asyncio.wait_for(writer.wait_for_head(200), 30)
        await wait_until(lambda: writer.stats.stored + writer.stats.duplicates == len(deliveries))
    assert await assert_log_contiguous(db) == 200
    stored_keys = [event.dedupe_key for r in results for _, event in r.stored]
    assert sorted(stored_keys) == sorted(e.dedupe_key for e in originals)
    assert writer.stats.duplicates == 200 * (copies - 1)
    in_table = await db.fetchval("SELECT count(DISTINCT dedupe_key) FROM events")
    assert in_table == 200


async def test_duplicates_take_no_positions(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    writer = EventWriter(database)
    results = collect(writer)
    async with running(writer):
        for sequence in range(10):
            await writer.put(message_event("conv-a", sequence))
        await asyncio.wait_for(writer.wait_for_head(10), 30)
        for sequence in range(15):  # ten already stored, five new
            await writer.put(message_event("conv-a", sequence))
        await asyncio.wait_for(writer.wait_for_head(15), 30)
    assert await assert_log_contiguous(db) == 15
    late = [(pos, e.sequence) for r in results for pos, e in r.stored if pos > 10]
    assert late == [(11, 10), (12, 11), (13, 12), (14, 13), (15, 14)]


async def test_failed_rows_roll_back_without_holes_and_go_to_quarantine(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    await db.execute(POISON_TRIGGER)
    events = [
        message_event("conv-a", i, text="poison" if i % 97 == 13 else "fine") for i in range(1000)
    ]
    poisoned = {e.dedupe_key for e in events if "poison" in e.payload}
    writer = EventWriter(database, batch_size=200, batch_wait_ms=20)
    results = collect(writer)
    async with running(writer):
        for event in events:
            await writer.put(event)
        good = len(events) - len(poisoned)
        await asyncio.wait_for(writer.wait_for_head(good), 30)
        await wait_until(lambda: writer.stats.quarantined == len(poisoned))
    head = await assert_log_contiguous(db)
    assert head == len(events) - len(poisoned)
    stored = await db.fetch("SELECT dedupe_key FROM events")
    assert {r["dedupe_key"] for r in stored} == {e.dedupe_key for e in events} - poisoned
    quarantined = await db.fetch("SELECT raw, error, session_id::text FROM quarantine")
    assert len(quarantined) == len(poisoned)
    for row in quarantined:
        assert b'"poison"' in row["raw"] and "poisoned row" in row["error"]
        assert row["session_id"] == events[0].session_id
    assert writer.stats.row_fallbacks >= 1
    reported = {e.dedupe_key for r in results for _, e in r.stored}
    assert reported.isdisjoint(poisoned)


async def test_payload_postgres_cannot_store_is_quarantined_raw(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    bad = message_event("conv-a", 1)
    bad.payload = '{"event": {"message": "nul \\u0000 inside"}}'  # jsonb rejects \u0000
    writer = EventWriter(database)
    async with running(writer):
        await writer.put(message_event("conv-a", 0))
        await writer.put(bad)
        await writer.put(message_event("conv-a", 2))
        await asyncio.wait_for(writer.wait_for_head(2), 30)
        await wait_until(lambda: writer.stats.quarantined == 1)
    assert await assert_log_contiguous(db) == 2
    raw = await db.fetchval("SELECT raw FROM quarantine")
    assert raw == bad.payload.encode()


async def test_second_writer_stays_passive_until_the_first_stops(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    first = EventWriter(database)
    second = EventWriter(database)
    first_stop = asyncio.Event()
    first_task = asyncio.create_task(first.run(first_stop))
    async with running(second):
        for sequence in range(100):
            await first.put(message_event("from-first", sequence))
        await asyncio.wait_for(first.wait_for_head(100), 30)
        for sequence in range(50):
            await second.put(message_event("from-second", sequence))
        await asyncio.sleep(1.0)
        assert first.is_leader and not second.is_leader
        assert await db.fetchval("SELECT count(*) FROM events") == 100
        first_stop.set()
        await asyncio.wait_for(first_task, 30)
        await asyncio.wait_for(second.wait_for_head(150), 30)
        assert second.is_leader
    assert await assert_log_contiguous(db) == 150
    rows = await db.fetch("SELECT conversation_id FROM events ORDER BY position")
    assert [r["conversation_id"] for r in rows] == ["from-first"] * 100 + ["from-second"] * 50


async def test_forced_concurrent_writers_do_not_interleave(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    # Different lock keys defeat leader election; LOCK TABLE must still serialize the batches.
    writers = [EventWriter(database, lock_key=k, batch_size=500, batch_wait_ms=50) for k in (1, 2)]
    results = [collect(w) for w in writers]
    async with running(writers[0]), running(writers[1]):
        async def feed(writer: EventWriter, name: str) -> None:
            for sequence in range(2500):
                await writer.put(message_event(name, sequence))

        await asyncio.gather(feed(writers[0], "w0"), feed(writers[1], "w1"))
        await wait_until(lambda: sum(w.stats.stored for w in writers) == 5000)
    assert await assert_log_contiguous(db) == 5000
    for batches in results:
        for batch in batches:
            positions = [p for p, _ in batch.stored]
            assert positions == list(range(positions[0], positions[0] + len(positions)))
    for name in ("w0", "w1"):
        rows = await db.fetch(
            "SELECT sequence FROM events WHERE conversation_id = $1 ORDER BY position", name
        )
        assert [r["sequence"] for r in rows] == list(range(2500))


async def test_reader_tailing_slow_commits_and_rollbacks_sees_every_position_once(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    await db.execute(SLOW_TRIGGER)
    await db.execute(POISON_TRIGGER)
    writers = [EventWriter(database, lock_key=k, batch_size=50) for k in (1, 2)]
    log = await EventLog.open(database)
    events = {
        name: [
            message_event(name, i, text="poison" if i % 97 == 7 else "ok") for i in range(600)
        ]
        for name in ("t0", "t1")
    }
    good = sum(1 for batch in events.values() for e in batch if "poison" not in e.payload)
    seen: list[int] = []

    async def tail() -> None:
        position = 0
        while position < good:
            batch = await log.read_after(position, 37)
            for event in batch:
                assert event.position == position + 1, "reader skipped or repeated a position"
                position = event.position
                seen.append(position)
            await asyncio.sleep(0.001)

    try:
        async with running(writers[0]), running(writers[1]):
            reader = asyncio.create_task(tail())

            async def feed(writer: EventWriter, batch: list[EventRecord]) -> None:
                for event in batch:
                    await writer.put(event)

            pairs = zip(writers, events.values(), strict=True)
            await asyncio.gather(*(feed(writer, batch) for writer, batch in pairs))
            await asyncio.wait_for(reader, 60)
        assert seen == list(range(1, good + 1))
        assert await log.head() == good
    finally:
        await log.close()
    assert await assert_log_contiguous(db) == good


async def test_read_after_pages_in_order(database: DatabaseTarget) -> None:
    writer = EventWriter(database)
    async with running(writer):
        for sequence in range(250):
            await writer.put(message_event("conv-r", sequence, text=f"m{sequence}"))
        await asyncio.wait_for(writer.wait_for_head(250), 30)
    log = await EventLog.open(database)
    try:
        first = await log.read_after(0, 100)
        assert [e.position for e in first] == list(range(1, 101))
        rest = await log.read_after(100, 1000)
        assert [e.position for e in rest] == list(range(101, 251))
        assert await log.read_after(250, 10) == []
        event = rest[-1]
        assert orjson.loads(event.payload)["event"]["message"] == "m249"
        assert (event.kind, event.sequence, event.conversation_id) == ("messaging", 249, "conv-r")
        with pytest.raises(ValueError):
            await log.read_after(0, 0)
    finally:
        await log.close()


async def test_queue_stays_bounded_while_the_database_is_unreachable() -> None:
    unreachable = DatabaseTarget(dsn="postgresql://postgres@127.0.0.1:1/none", embedded=False)
    writer = EventWriter(
        unreachable, queue_size=20, batch_size=5, max_backoff_s=0.2, drain_timeout_s=0.5
    )
    async with running(writer):
        async def produce() -> None:
            for sequence in range(100):
                await writer.put(message_event("conv-b", sequence))

        producer = asyncio.create_task(produce())
        await asyncio.sleep(1.0)
        assert not producer.done(), "producer should be blocked by the full queue"
        assert writer.queue.qsize() == 20
        assert writer.stats.retries >= 2
        producer.cancel()


async def test_stop_drains_what_is_queued(database: DatabaseTarget, db: asyncpg.Connection) -> None:
    writer = EventWriter(database, queue_size=5000)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    await asyncio.sleep(0)
    for sequence in range(3000):
        writer.queue.put_nowait(message_event("conv-d", sequence))
    stop.set()
    await asyncio.wait_for(task, 30)
    assert await assert_log_contiguous(db) == 3000


async def test_lock_table_keeps_two_writers_from_storing_the_same_key(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    # Both writers get the same events. Without LOCK TABLE their NOT EXISTS checks race and
    # one batch dies on the unique index; with it, the second simply finds them stored.
    writers = [EventWriter(database, lock_key=k, batch_size=100, batch_wait_ms=5) for k in (1, 2)]
    events = [message_event("shared", i) for i in range(3000)]
    async with running(writers[0]), running(writers[1]):
        await asyncio.gather(*(feed_all(w, events) for w in writers))
        await wait_until(
            lambda: sum(w.stats.stored + w.stats.duplicates for w in writers) == 6000
        )
    assert await assert_log_contiguous(db) == 3000
    assert [w.stats.row_fallbacks for w in writers] == [0, 0]
    assert sum(w.stats.stored for w in writers) == 3000
    assert await db.fetchval("SELECT count(*) FROM quarantine") == 0


async def feed_all(writer: EventWriter, events: list[EventRecord]) -> None:
    for event in events:
        await writer.put(event)


async def test_retry_after_a_lost_commit_ack_reports_what_was_stored(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    from recorder.eventlog.appender import BatchAppender
    from recorder.eventlog.records import QuarantinedFrame

    connection = await asyncpg.connect(database.dsn)
    try:
        appender = BatchAppender(lambda: 0, lambda: None)
        frame = QuarantinedFrame(received_at=1.0, raw=b"not json", error="malformed")
        batch = [frame, *(message_event("conv-ack", i) for i in range(5))]
        first = await appender.append(connection, batch)
        # The same batch again, as after a connection lost between COMMIT and its reply.
        again = await appender.append(connection, batch, committed_after=0)
    finally:
        await connection.close()
    assert [p for p, _ in first.stored] == [1, 2, 3, 4, 5]
    assert [p for p, _ in again.stored] == [1, 2, 3, 4, 5]
    assert again.duplicates == []
    assert await db.fetchval("SELECT count(*) FROM quarantine") == 1
    assert await assert_log_contiguous(db) == 5


async def test_rows_that_even_quarantine_cannot_take_as_is_are_kept(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    bad_session = message_event("conv-q", 1, session_id="not-a-uuid")
    bad_text = message_event("conv-q", 2)
    bad_text.consumer_id = "nul\x00inside"
    writer = EventWriter(database)
    async with running(writer):
        await writer.put(message_event("conv-q", 0))
        await writer.put(bad_session)
        await writer.put(bad_text)
        await writer.put(message_event("conv-q", 3))
        await asyncio.wait_for(writer.wait_for_head(2), 30)
        await wait_until(lambda: writer.stats.quarantined == 2)
    rows = await db.fetch("SELECT raw, session_id, consumer_id FROM quarantine ORDER BY id")
    assert {r["raw"] for r in rows} == {bad_session.payload.encode(), bad_text.payload.encode()}
    assert all(r["session_id"] is None or r["consumer_id"] is not None for r in rows)
    assert await assert_log_contiguous(db) == 2


async def test_a_log_that_disagrees_with_its_head_stops_the_writer(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    from recorder.eventlog.writer import LogIntegrityError

    writer = EventWriter(database)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    await writer.put(message_event("conv-t", 0))
    await asyncio.wait_for(writer.wait_for_head(1), 30)
    await db.execute("UPDATE log_head SET position = position - 1")  # as after a bad restore
    await writer.put(message_event("conv-t", 1))
    with pytest.raises(LogIntegrityError):
        await asyncio.wait_for(task, 30)
    assert await db.fetchval("SELECT count(*) FROM quarantine") == 0
    assert await db.fetchval("SELECT count(*) FROM events") == 1


async def test_waiters_learn_when_the_writer_stops(database: DatabaseTarget) -> None:
    from recorder.errors import WriterStoppedError

    writer = EventWriter(database)
    await writer.put(message_event("conv-w", 0))  # accepted before run() starts
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    await asyncio.wait_for(writer.wait_for_head(1), 30)
    waiter = asyncio.create_task(writer.wait_for_head(5))
    stop.set()
    await asyncio.wait_for(task, 30)
    with pytest.raises(WriterStoppedError):
        await asyncio.wait_for(waiter, 5)
    with pytest.raises(WriterStoppedError):
        await writer.put(message_event("conv-w", 1))


async def test_a_stop_does_not_wait_out_the_batch_window(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    # A ten-minute window: before the fix, a stop waited for it to close (SIGINT took 31.5 s
    # with 30 s windows and ended in "writer did not stop within 30s; cancelled").
    writer = EventWriter(database, batch_wait_ms=600_000)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    await writer.put(message_event("conv-w", 1))
    await wait_until(lambda: writer.queue.empty())  # the writer holds it, filling a batch
    await asyncio.sleep(0.05)
    assert writer.head == 0, "the window is still open: nothing committed yet"
    stop.set()
    await asyncio.wait_for(task, 30)
    assert await assert_log_contiguous(db) == 1, "what the open batch held was committed"
