"""Shared helpers for tests: event factories and log checks."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from recorder.eventlog.records import EventRecord, dedupe_digest

SESSION_ID = str(uuid.UUID(int=1))


async def admin(dsn: str, *statements: str) -> None:
    """Run statements on their own connection (CREATE/DROP DATABASE cannot run in a
    transaction, nor on the database they name)."""
    connection = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def with_database(dsn: str, name: str) -> str:
    """The same server DSN, pointing at database `name` (query such as ?host= kept)."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


def message_event(
    conversation: str,
    sequence: int,
    *,
    dialog: str | None = None,
    text: str = "hello",
    session_id: str = SESSION_ID,
) -> EventRecord:
    """A ContentEvent-shaped messaging change, keyed by (dialog, sequence) as in production."""
    dialog_id = dialog or conversation
    payload = {
        "sequence": sequence,
        "originatorId": "consumer-1",
        "serverTimestamp": 1_700_000_000_000 + sequence,
        "event": {"type": "ContentEvent", "contentType": "text/plain", "message": text},
        "conversationId": conversation,
        "dialogId": dialog_id,
    }
    return EventRecord(
        received_at=time.time(),
        account_id="12345678",
        consumer_id="consumer-1",
        session_id=session_id,
        kind="messaging",
        type="ms.MessagingEventNotification",
        change_type="ContentEvent",
        conversation_id=conversation,
        dialog_id=dialog_id,
        sequence=sequence,
        originator_id="consumer-1",
        server_ts=(1_700_000_000_000 + sequence) / 1000,
        dedupe_key=dedupe_digest("messaging", dialog_id, sequence),
        payload=orjson.dumps(payload).decode(),
    )


async def assert_log_contiguous(connection: asyncpg.Connection) -> int:
    """Positions run 1..head with no hole and no repeat; returns the head."""
    head = await connection.fetchval("SELECT position FROM log_head WHERE id = 1")
    count, low, high = await connection.fetchrow(
        "SELECT count(*), min(position), max(position) FROM events"
    )
    if head == 0:
        assert count == 0
        return 0
    assert (count, low, high) == (head, 1, head), (
        f"positions not contiguous: {count=} {low=} {high=} {head=}"
    )
    return int(head)


async def wait_until(condition: Callable[[], bool], within_s: float = 30.0) -> None:
    """Poll an in-process condition (a counter, a flag) until it holds."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def free_port() -> int:
    """A port nothing listens on right now, for an API a test starts."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
