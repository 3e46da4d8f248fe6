"""BatchAppender on real PostgreSQL: what one batch does to the log, in one transaction."""

from __future__ import annotations

import dataclasses
import time

import asyncpg
import pytest

from recorder.eventlog.appender import BatchAppender, LogIntegrityError, QueueItem
from recorder.eventlog.records import EventRecord, QuarantinedFrame
from tests.helpers import SESSION_ID, assert_log_contiguous, message_event


class Appender:
    """A BatchAppender whose head follows what it committed, as the writer's does."""

    def __init__(self) -> None:
        self.head = 0
        self.fallbacks = 0
        self.appender = BatchAppender(lambda: self.head, self._fallback)

    def _fallback(self) -> None:
        self.fallbacks += 1

    async def append(
        self, connection: asyncpg.Connection, items: list[QueueItem],
        committed_after: int | None = None,
    ) -> tuple[list[tuple[int, EventRecord]], list[EventRecord], list[QuarantinedFrame]]:
        result = await self.appender.append(connection, items, committed_after)
        self.head = max(self.head, result.head)
        return result.stored, result.duplicates, result.quarantined


def bad_kind(event: EventRecord) -> EventRecord:
    """Violates events_kind_check: a row the database refuses (an integrity error)."""
    return dataclasses.replace(event, kind="not-a-kind")


def bad_payload(event: EventRecord) -> EventRecord:
    """Not JSON: the jsonb cast fails (a data error)."""
    return dataclasses.replace(event, payload='{"cut off": ')


async def test_a_batch_takes_contiguous_positions_in_order_and_moves_the_cursors(
    db: asyncpg.Connection,
) -> None:
    appender = Appender()
    batch: list[QueueItem] = [message_event("conv-a", n) for n in range(5)]
    batch += [message_event("conv-b", n) for n in (7, 3)]
    stored, duplicates, quarantined = await appender.append(db, batch)
    assert [position for position, _ in stored] == [1, 2, 3, 4, 5, 6, 7]
    assert [event for _, event in stored] == batch, "positions follow the input order"
    assert duplicates == [] and quarantined == [] and appender.head == 7
    assert await assert_log_contiguous(db) == 7
    rows = await db.fetch("SELECT position, dialog_id, sequence FROM events ORDER BY position")
    assert [(r["dialog_id"], r["sequence"]) for r in rows] == [
        ("conv-a", 0), ("conv-a", 1), ("conv-a", 2), ("conv-a", 3), ("conv-a", 4),
        ("conv-b", 7), ("conv-b", 3),
    ]
    cursors = dict(await db.fetch("SELECT dialog_id, last_sequence FROM dialog_cursors"))
    assert cursors == {"conv-a": 4, "conv-b": 7}, "a cursor is the highest sequence stored"


async def test_duplicates_in_the_batch_and_in_the_table_are_reported_not_stored(
    db: asyncpg.Connection,
) -> None:
    appender = Appender()
    await appender.append(db, [message_event("conv-a", n) for n in range(3)])
    first = message_event("conv-a", 3, text="first copy")
    again = message_event("conv-a", 3, text="second copy")
    old = message_event("conv-a", 1, text="redelivered")
    stored, duplicates, _ = await appender.append(db, [first, old, again, message_event("c", 9)])
    assert [(p, e.sequence) for p, e in stored] == [(4, 3), (5, 9)]
    assert sorted(id(e) for e in duplicates) == sorted([id(again), id(old)])
    assert await assert_log_contiguous(db) == 5, "a duplicate takes no position"
    kept = await db.fetchval("SELECT payload->'event'->>'message' FROM events WHERE position = 4")
    assert kept == "first copy", "the first delivery in the batch is the one stored"


async def test_positions_continue_from_log_head_not_from_the_rows(
    db: asyncpg.Connection,
) -> None:
    await db.execute("UPDATE log_head SET position = 41 WHERE id = 1")
    appender = Appender()
    stored, _, _ = await appender.append(db, [message_event("conv-a", 0), message_event("c", 1)])
    assert [position for position, _ in stored] == [42, 43]
    assert await db.fetchval("SELECT position FROM log_head") == 43


async def test_bad_rows_are_bisected_out_and_quarantined_the_rest_stays_contiguous(
    db: asyncpg.Connection,
) -> None:
    appender = Appender()
    events = [message_event("conv-a", n) for n in range(10)]
    events[3] = bad_kind(events[3])
    events[7] = bad_payload(events[7])
    stored, duplicates, quarantined = await appender.append(db, list(events))
    good = [e for i, e in enumerate(events) if i not in (3, 7)]
    assert [event for _, event in stored] == good
    assert [position for position, _ in stored] == list(range(1, 9))
    assert duplicates == [] and appender.fallbacks == 1
    assert await assert_log_contiguous(db) == 8
    assert sorted(f.raw for f in quarantined) == sorted(
        e.payload.encode() for e in (events[3], events[7])
    )
    rows = await db.fetch("SELECT raw, error, session_id::text AS s FROM quarantine ORDER BY raw")
    assert len(rows) == 2 and {r["s"] for r in rows} == {SESSION_ID}
    errors = {bytes(r["raw"]): r["error"] for r in rows}
    assert "CheckViolation" in errors[events[3].payload.encode()]
    assert "InvalidTextRepresentation" in errors[events[7].payload.encode()]
    assert await db.fetchval("SELECT last_sequence FROM dialog_cursors") == 9


async def test_quarantined_frames_of_the_batch_commit_with_its_events(
    db: asyncpg.Connection,
) -> None:
    appender = Appender()
    frame = QuarantinedFrame(received_at=time.time(), raw=b"\xff not json", error="malformed",
                             session_id=SESSION_ID)
    stored, _, quarantined = await appender.append(db, [frame, message_event("conv-a", 0)])
    assert len(stored) == 1 and quarantined == [frame] and appender.fallbacks == 0
    assert await db.fetchval("SELECT raw FROM quarantine") == b"\xff not json"


async def test_a_retry_after_a_lost_commit_ack_reports_what_the_lost_attempt_stored(
    db: asyncpg.Connection,
) -> None:
    appender = Appender()
    earlier = message_event("conv-a", 0)
    await appender.append(db, [earlier])
    head_before = appender.head  # what the writer knew before the attempt whose ack was lost
    batch: list[QueueItem] = [message_event("conv-a", n) for n in (1, 2)]
    await appender.appender.append(db, batch)  # committed, but the writer never heard
    retry: list[QueueItem] = [earlier, *batch, message_event("conv-a", 3)]
    stored, duplicates, _ = await appender.append(db, retry, committed_after=head_before)
    assert [(p, e.sequence) for p, e in stored] == [(2, 1), (3, 2), (4, 3)], (
        "the lost attempt's rows are reported as stored, at their positions"
    )
    assert duplicates == [earlier], "stored before the lost attempt: a real duplicate"
    assert appender.head == 4 and await assert_log_contiguous(db) == 4


async def test_a_log_that_disagrees_with_its_head_stops_the_batch_and_rolls_it_back(
    db: asyncpg.Connection,
) -> None:
    appender = Appender()
    await appender.append(db, [message_event("conv-a", 0)])
    await db.execute("UPDATE log_head SET position = 0 WHERE id = 1")  # a bad restore
    frame = QuarantinedFrame(received_at=time.time(), raw=b"x", error="malformed")
    with pytest.raises(LogIntegrityError):
        await appender.append(db, [frame, message_event("conv-b", 0)])
    assert appender.fallbacks == 0, "not mistaken for a bad row"
    assert await db.fetchval("SELECT count(*) FROM events") == 1
    assert await db.fetchval("SELECT position FROM log_head") == 0
    assert await db.fetchval("SELECT count(*) FROM quarantine") == 0, "one transaction"


async def test_rows_the_client_cannot_encode_for_the_copy_are_quarantined_like_the_rest(
    db: asyncpg.Connection,
) -> None:
    appender = Appender()
    events = [message_event("conv-a", n) for n in range(8)]
    events[1] = dataclasses.replace(events[1], payload='{"lone": "\ud800"}')  # not UTF-8
    events[4] = dataclasses.replace(events[4], session_id="not-a-uuid")
    events[6] = dataclasses.replace(events[6], sequence=2**70)  # beyond bigint
    stored, duplicates, quarantined = await appender.append(db, list(events))
    good = [e for i, e in enumerate(events) if i not in (1, 4, 6)]
    assert [event for _, event in stored] == good
    assert [position for position, _ in stored] == list(range(1, 6))
    assert duplicates == [] and appender.fallbacks == 1 and len(quarantined) == 3
    assert await assert_log_contiguous(db) == 5
    errors = [r["error"] for r in await db.fetch("SELECT error FROM quarantine")]
    assert len(errors) == 3 and all(e.startswith("DataError: invalid input") for e in errors)
    assert await db.fetchval("SELECT last_sequence FROM dialog_cursors") == 7


async def test_a_batch_of_only_bad_rows_takes_no_position(db: asyncpg.Connection) -> None:
    appender = Appender()
    stored, _, quarantined = await appender.append(
        db, [bad_kind(message_event("conv-a", 0)), bad_payload(message_event("conv-a", 1))]
    )
    assert stored == [] and len(quarantined) == 2
    assert await db.fetchval("SELECT position FROM log_head") == 0, "a rolled back COPY burns none"
    stored, _, _ = await appender.append(db, [message_event("conv-a", 2)])
    assert [position for position, _ in stored] == [1]


async def test_recorded_at_is_read_once_per_batch_after_the_lock_and_follows_commit_order(
    db: asyncpg.Connection,
) -> None:
    appender = Appender()
    before = await db.fetchval("SELECT extract(epoch FROM clock_timestamp())")
    await appender.append(db, [message_event("conv-a", n) for n in range(3)])
    await appender.append(db, [message_event("conv-a", n) for n in range(3, 5)])
    rows = await db.fetch("SELECT position, extract(epoch FROM recorded_at) AS recorded_at "
                          "FROM events ORDER BY position")
    first, second = {r["recorded_at"] for r in rows[:3]}, {r["recorded_at"] for r in rows[3:]}
    assert len(first) == 1 and len(second) == 1, "one clock read per batch"
    assert before < min(first) < min(second), "later commits, later recorded_at"
