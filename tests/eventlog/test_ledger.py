"""DatabaseSessionLedger on real PostgreSQL: one `sessions` row per websocket session.

The connections are real UmsConnection objects that are never run: the ledger only reads their
identity and counters, which the tests set as a running session would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg
import pytest

from recorder.db.target import DatabaseTarget
from recorder.eventlog.appender import BatchAppender
from recorder.eventlog.ledger import DatabaseSessionLedger
from recorder.ums.connection import CloseInfo, UmsConnection
from tests.helpers import message_event

ACCOUNT = "71234567"
URL = "ws://127.0.0.1:1/ws_api/account/71234567/messaging/consumer?v=3"
ROW = """
SELECT session_id::text AS session_id, account_id, consumer_id, identity_name, url,
       extract(epoch FROM opened_at)::double precision AS opened_at, closed_at, close_code,
       close_reason, frames, events, duplicates, quarantined,
       extract(epoch FROM last_frame_at)::double precision AS last_frame_at,
       last_clock_rtt_ms, last_clock_at
FROM sessions WHERE session_id = $1
"""


def session(consumer: str = "consumer-1") -> UmsConnection:
    return UmsConnection(cast(Any, None), cast(Any, None), consumer_id=consumer)


async def row(db: asyncpg.Connection, connection: UmsConnection) -> asyncpg.Record | None:
    found: asyncpg.Record | None = await db.fetchrow(ROW, connection.session_id)
    return found


@pytest.fixture
async def pool(database: DatabaseTarget) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database.dsn, min_size=1, max_size=2)
    try:
        yield created
    finally:
        await created.close()


async def test_an_opened_session_gets_its_row_at_once(
    pool: asyncpg.Pool, db: asyncpg.Connection,
) -> None:
    connection = session()
    await DatabaseSessionLedger(pool, ACCOUNT).opened(connection, "alice", URL)
    found = await row(db, connection)
    assert found is not None
    assert (found["session_id"], found["account_id"], found["consumer_id"]) == (
        str(connection.session_id), ACCOUNT, "consumer-1",
    )
    assert (found["identity_name"], found["url"]) == ("alice", URL)
    assert found["opened_at"] == pytest.approx(connection.opened_at, abs=1e-5)
    assert [found[c] for c in ("frames", "events", "duplicates", "quarantined")] == [0, 0, 0, 0]
    assert [found[c] for c in ("closed_at", "close_code", "close_reason", "last_frame_at",
                               "last_clock_rtt_ms", "last_clock_at")] == [None] * 6


async def test_a_flush_keeps_open_sessions_current(
    pool: asyncpg.Pool, db: asyncpg.Connection,
) -> None:
    ledger = DatabaseSessionLedger(pool, ACCOUNT)
    connection = session()
    await ledger.opened(connection, "alice", URL)
    connection.frames, connection.events = 12, 30
    connection.last_frame_at, connection.last_clock_rtt_ms = time.time(), 4.5
    await ledger.flush()
    found = await row(db, connection)
    assert found is not None and (found["frames"], found["events"]) == (12, 30)
    assert found["last_frame_at"] == pytest.approx(connection.last_frame_at, abs=1e-5)
    assert found["last_clock_rtt_ms"] == 4.5 and found["last_clock_at"] is not None
    connection.last_clock_rtt_ms = None  # no round trip yet on this tick: the last one stays
    await ledger.flush()
    found = await row(db, connection)
    assert found is not None and found["last_clock_rtt_ms"] == 4.5


async def test_duplicates_and_quarantined_frames_are_counted_per_session_after_commits(
    pool: asyncpg.Pool, db: asyncpg.Connection,
) -> None:
    ledger = DatabaseSessionLedger(pool, ACCOUNT)
    first, second = session(), session()
    for connection, name in ((first, "alice"), (second, "bob")):
        await ledger.opened(connection, name, URL)
    a, b = str(first.session_id), str(second.session_id)
    bad = dataclasses.replace(message_event("conv-a", 9, session_id=a), kind="not-a-kind")
    batch = [message_event("conv-a", 1, session_id=a), message_event("conv-a", 1, session_id=a),
             bad, message_event("conv-b", 1, session_id=b)]
    appender = BatchAppender(lambda: 0, lambda: None)
    result = await appender.append(db, batch)  # a real commit: 2 stored, 1 duplicate, 1 bad
    ledger.committed(result)
    again = await appender.append(db, [message_event("conv-b", 1, session_id=a)])
    ledger.committed(again)  # b's event, redelivered on a's socket: a's duplicate
    found = await row(db, first)
    assert found is not None and found["duplicates"] == 0, "counted in memory until a write"
    await ledger.flush()
    on_a, on_b = await row(db, first), await row(db, second)
    assert on_a is not None and (on_a["duplicates"], on_a["quarantined"]) == (2, 1)
    assert on_b is not None and (on_b["duplicates"], on_b["quarantined"]) == (0, 0)


async def test_a_closed_session_records_how_it_ended_and_is_then_left_alone(
    pool: asyncpg.Pool, db: asyncpg.Connection,
) -> None:
    ledger = DatabaseSessionLedger(pool, ACCOUNT)
    by_server, by_error = session(), session()
    for connection in (by_server, by_error):
        await ledger.opened(connection, "alice", URL)
    by_server.frames = 7
    await ledger.closed(by_server, CloseInfo(1011, "server restarting " + "x" * 600))
    await ledger.closed(by_error, CloseInfo(None, "", error="ConnectionResetError"))
    found = await row(db, by_server)
    assert found is not None and found["closed_at"] is not None and found["frames"] == 7
    assert found["close_code"] == 1011 and len(found["close_reason"]) == 500
    assert found["close_reason"].startswith("server restarting x")
    dropped = await row(db, by_error)
    assert dropped is not None and dropped["close_code"] is None
    assert dropped["close_reason"] == "ConnectionResetError"
    await db.execute("UPDATE sessions SET frames = -1")
    by_server.frames = 8
    await ledger.flush()
    assert await db.fetchval("SELECT max(frames) FROM sessions") == -1, (
        "a closed session once written is not written again"
    )


async def test_rows_refused_during_an_outage_are_written_when_it_ends(
    pool: asyncpg.Pool, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="recorder")
    await db.execute("ALTER TABLE sessions ADD CONSTRAINT refuse CHECK (false) NOT VALID")
    ledger = DatabaseSessionLedger(pool, ACCOUNT, interval_s=3600)
    connection = session()
    await ledger.opened(connection, "alice", URL)  # refused: must not raise
    connection.frames = 3
    await ledger.closed(connection, CloseInfo(4401, "token expired"))
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("ums.ledger.update_failed") == 2, "reported, retried later"
    await db.execute("ALTER TABLE sessions DROP CONSTRAINT refuse")
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(ledger.run(stop), 10)  # stopping: one last flush
    found = await row(db, connection)
    assert found is not None and (found["close_code"], found["close_reason"]) == (
        4401, "token expired",
    )
    assert found["frames"] == 3 and found["identity_name"] == "alice"
    await db.execute("UPDATE sessions SET frames = -1")
    await ledger.flush()
    assert await db.fetchval("SELECT frames FROM sessions") == -1, "written once, then dropped"


async def test_run_keeps_open_sessions_current_on_every_tick(
    pool: asyncpg.Pool, db: asyncpg.Connection,
) -> None:
    ledger = DatabaseSessionLedger(pool, ACCOUNT, interval_s=0.02)
    connection = session()
    await ledger.opened(connection, "alice", URL)
    stop = asyncio.Event()
    task = asyncio.create_task(ledger.run(stop))
    try:
        for frames in (5, 9):
            connection.frames = frames
            await written(db, connection, frames)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def written(db: asyncpg.Connection, connection: UmsConnection, frames: int) -> None:
    """Wait (bounded) until the row shows `frames`: no flush is called, only run's ticks."""
    for _ in range(500):
        found = await row(db, connection)
        if found is not None and found["frames"] == frames:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"frames never reached {frames}")
