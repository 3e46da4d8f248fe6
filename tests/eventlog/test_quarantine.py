"""Quarantine rows on real PostgreSQL: what a row holds, its key, and rows that cannot fail."""

from __future__ import annotations

import dataclasses
import time
import uuid

import asyncpg
import pytest

from recorder.eventlog import sql
from recorder.eventlog.quarantine import (
    frame_key,
    minimal_quarantine_row,
    quarantine_event,
    quarantine_row,
)
from recorder.eventlog.records import QuarantinedFrame
from tests.helpers import SESSION_ID, message_event

ROW = """
SELECT extract(epoch FROM received_at)::double precision AS received_at,
       session_id::text AS session_id, account_id, consumer_id, raw, error, dedupe_key
FROM quarantine ORDER BY id
"""


async def insert(db: asyncpg.Connection, row: tuple[object, ...]) -> None:
    await db.execute(sql.INSERT_QUARANTINE, *row)


async def test_a_quarantined_event_keeps_its_payload_whole_with_the_reason(
    db: asyncpg.Connection,
) -> None:
    # Text as a JSON parser may hand it over: non-ASCII, and a lone surrogate (not UTF-8).
    event = dataclasses.replace(message_event("conv-a", 4), payload='{"m": "naïve \ud83d"}')
    frame = quarantine_event(event, "CheckViolationError: bad kind")
    assert frame.raw == event.payload.encode("utf-8", "surrogatepass")
    assert (frame.received_at, frame.error) == (event.received_at, "CheckViolationError: bad kind")
    assert (frame.session_id, frame.account_id, frame.consumer_id) == (
        event.session_id, event.account_id, event.consumer_id,
    )
    await insert(db, quarantine_row(frame))
    [row] = await db.fetch(ROW)
    assert bytes(row["raw"]) == frame.raw, "the bytes as received, not a re-encoding"
    assert row["raw"].decode("utf-8", "surrogatepass") == event.payload
    assert row["session_id"] == SESSION_ID and row["account_id"] == event.account_id
    assert row["consumer_id"] == event.consumer_id and row["error"] == frame.error
    assert row["received_at"] == pytest.approx(event.received_at, abs=1e-5)
    assert bytes(row["dedupe_key"]) == frame_key(frame)


async def test_fields_postgresql_would_refuse_are_made_storable(db: asyncpg.Connection) -> None:
    frame = QuarantinedFrame(
        received_at=time.time(), raw=b"\x00\xff\xfe{not json", error="bad\x00frame",
        session_id="not-a-uuid", account_id="acc\x00ount", consumer_id="\x00",
    )
    await insert(db, quarantine_row(frame))
    [row] = await db.fetch(ROW)
    assert bytes(row["raw"]) == frame.raw, "raw is bytea: kept byte for byte"
    assert row["session_id"] is None, "a session id that is not a UUID is dropped"
    assert (row["account_id"], row["consumer_id"], row["error"]) == (
        "acc\\u0000ount", "\\u0000", "bad\\u0000frame",
    )


async def test_a_session_id_in_another_uuid_spelling_is_kept(db: asyncpg.Connection) -> None:
    session = uuid.uuid4()
    frame = QuarantinedFrame(time.time(), b"x", "e", session_id="{" + session.hex.upper() + "}")
    await insert(db, quarantine_row(frame))
    assert await db.fetchval("SELECT session_id FROM quarantine") == session


async def test_the_same_bad_frame_is_stored_once_even_with_another_reason(
    db: asyncpg.Connection,
) -> None:
    frame = QuarantinedFrame(time.time(), b"{broken", "first try", session_id=SESSION_ID)
    retried = dataclasses.replace(frame, error="second try")
    for row in (quarantine_row(frame), quarantine_row(retried), minimal_quarantine_row(frame)):
        await insert(db, row)
    assert [r["error"] for r in await db.fetch(ROW)] == ["first try"]


FRAME = QuarantinedFrame(1_700_000_000.25, b"{broken", "e", session_id=SESSION_ID)


@pytest.mark.parametrize("other", [
    dataclasses.replace(FRAME, raw=b"{broken!"),
    dataclasses.replace(FRAME, session_id=str(uuid.UUID(int=2))),
    dataclasses.replace(FRAME, received_at=1_700_000_000.5),
], ids=["raw", "session_id", "received_at"])
async def test_a_frame_differing_in_bytes_session_or_arrival_is_another_row(
    db: asyncpg.Connection, other: QuarantinedFrame,
) -> None:
    frame = FRAME
    assert frame_key(other) != frame_key(frame)
    await insert(db, quarantine_row(frame))
    await insert(db, quarantine_row(other))
    assert await db.fetchval("SELECT count(*) FROM quarantine") == 2


async def test_lone_surrogates_are_kept_as_visible_escapes(db: asyncpg.Connection) -> None:
    # Lone surrogates cannot be encoded for a text column; the full row escapes them instead
    # of falling back to the minimal row and losing the account and the reason.
    frame = QuarantinedFrame(time.time(), b"\xed\xa0\x80", "reason \udc80", "not-a-uuid",
                             account_id="acc \ud800", consumer_id="naïve \udfff")
    await insert(db, quarantine_row(frame))
    [row] = await db.fetch(ROW)
    assert bytes(row["raw"]) == frame.raw
    assert row["error"] == "reason \\udc80" and row["account_id"] == "acc \\ud800"
    assert row["consumer_id"] == "naïve \\udfff", "other non-ASCII text stays as it was"


async def test_the_minimal_row_keeps_the_raw_bytes_and_the_key(db: asyncpg.Connection) -> None:
    frame = QuarantinedFrame(time.time(), b"\xed\xa0\x80", "reason", "not-a-uuid",
                             account_id="acc")
    await insert(db, minimal_quarantine_row(frame))
    [row] = await db.fetch(ROW)
    assert bytes(row["raw"]) == frame.raw and row["error"] == "unstorable frame"
    assert row["session_id"] is None and row["account_id"] is None
    assert bytes(row["dedupe_key"]) == frame_key(frame), "same key as the full row would have"
