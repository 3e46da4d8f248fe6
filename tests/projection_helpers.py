"""Helpers for the projection tests: log rows from example frames and synthetic changes,
keyed as the receiver keys them (design.md section 2), and projection snapshots."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import orjson

from recorder.db.target import DatabaseTarget
from recorder.eventlog.records import EventRecord, canonical_json, dedupe_digest
from recorder.eventlog.writer import EventWriter
from recorder.projection.projector import Projector
from recorder.projection.rows import LogRow
from recorder.ums import payload
from tests.helpers import SESSION_ID
from tests.protocol_files import example_json

ACCOUNT = "71234567"
CONSUMER = "b3f1c2d4-8a9e-4f6b-9c0d-2e7a5b1f3c88"
AGENT1 = "5c2e9f10-7d3a-5b8e-a1c4-9e0f2d6b7a31"
AGENT2 = "8a41d7e2-3c9b-5f06-b2d8-4e7c1a9f0b55"
BOT = "c7d2e8f4-1b6a-5c93-8e0d-3f5a7b9c2d11"
CONV = "4f7a9c2e-3b1d-4e8f-a6c5-9d0b2e7f1a36"
SURVEY = "Kq7ZrT2mS1uVx9Ww3YbA0c"
OLD_CONV = "9e2d4b6a-1c3f-4a5e-b7d9-0f2a4c6e8b13"

# Columns that legitimately differ between two folds of the same log.
VOLATILE = {"updated_at"}
TABLES = {
    "conversations": "conversation_id",
    "dialogs": "dialog_id",
    "participants": "conversation_id, participant_id, role",
    "messages": "dialog_id, sequence",
    "receipts": "dialog_id, sequence, participant_id, status",
}


def example_changes(name: str) -> list[dict[str, Any]]:
    """The changes of the example frame `name` (tests/protocol/examples)."""
    frame = example_json(name)
    return [c for c in payload.as_list(frame["body"].get("changes")) if isinstance(c, dict)]


def record(change: dict[str, Any], *, consumer_id: str = CONSUMER) -> EventRecord:
    """One log row for one change, keyed like the receiver keys it."""
    if isinstance(change.get("result"), dict):
        conversation = payload.change_conversation_id(change)
        stamp = payload.server_timestamp_ms(change)
        key = (dedupe_digest("conversation", conversation, change.get("type"), stamp)
               if stamp is not None else dedupe_digest("conversation-content",
                                                       canonical_json(change)))
        kind, type_, change_type, dialog, sequence = (
            "conversation", "cqm.ExConversationChangeNotification", change.get("type"), None, None)
    else:
        conversation = payload.change_conversation_id(change)
        dialog = payload.change_dialog_id(change)
        sequence = payload.change_sequence(change)
        stamp = payload.server_timestamp_ms(change)
        key = (dedupe_digest("messaging", dialog, sequence) if sequence is not None
               else dedupe_digest("ephemeral", SESSION_ID, canonical_json(change)))
        kind, type_, change_type = (
            "messaging", "ms.MessagingEventNotification", payload.event_type(change) or None)
    return EventRecord(
        received_at=time.time(), account_id=ACCOUNT, consumer_id=consumer_id,
        session_id=SESSION_ID, kind=kind, type=type_, change_type=change_type,
        conversation_id=conversation, dialog_id=dialog, sequence=sequence,
        originator_id=payload.originator_id(change) if kind == "messaging" else None,
        server_ts=None if stamp is None else stamp / 1000, dedupe_key=key,
        payload=orjson.dumps(change).decode(),
    )


def log_rows(changes: Iterable[dict[str, Any]], positions: Iterable[int] | None = None,
             ) -> list[LogRow]:
    """Changes as the fold reads them from the log, without a database."""
    found = []
    for position, change in zip(positions or range(1, 1 << 62), changes, strict=False):
        r = record(change)
        found.append(LogRow(position, r.kind, r.account_id, r.consumer_id, r.conversation_id,
                            r.dialog_id, r.payload))
    return found


def upsert(conversation: str, ts: int | None, *, skill: str | None = "100",
           agents: Sequence[str] = (), readers: Sequence[str] = (), state: str = "OPEN",
           stage: str = "OPEN", dialog_state: str = "OPEN", **details: Any) -> dict[str, Any]:
    """A synthetic UPSERT carrying the complete state, as UMS sends it."""
    people = [{"id": CONSUMER, "role": "CONSUMER"}]
    people += [{"id": a, "role": "ASSIGNED_AGENT"} for a in agents]
    people += [{"id": r, "role": "READER"} for r in readers]
    body: dict[str, Any] = {
        "participants": people,
        "dialogs": [{
            "dialogId": conversation, "dialogType": "MAIN", "channelType": "MESSAGING",
            "state": dialog_state, "creationTs": 1_700_000_000_000,
            "participantsDetails": [{**p, "state": "ACTIVE"} for p in people],
            **({"metaDataLastUpdateTs": ts} if ts is not None else {}),
        }],
        "brandId": ACCOUNT, "state": state, "stage": stage, "startTs": 1_700_000_000_000,
        **({"skillId": skill} if skill is not None else {}),
        **({"metaDataLastUpdateTs": ts} if ts is not None else {}),
        **details,
    }
    return {"type": "UPSERT",
            "result": {"convId": conversation, "effectiveTTR": -1, "conversationDetails": body}}


def delete(conversation: str, ts: int | None) -> dict[str, Any]:
    details = {"state": "CLOSE"} | ({"metaDataLastUpdateTs": ts} if ts is not None else {})
    return {"type": "DELETE", "result": {"convId": conversation, "conversationDetails": details}}


def content(conversation: str, sequence: int, text: str = "hello", *, dialog: str | None = None,
            originator: str = CONSUMER, role: str = "CONSUMER") -> dict[str, Any]:
    return {
        "sequence": sequence, "originatorId": originator,
        "originatorMetadata": {"id": originator, "role": role},
        "serverTimestamp": 1_700_000_000_000 + sequence,
        "event": {"type": "ContentEvent", "contentType": "text/plain", "message": text},
        "conversationId": conversation, "dialogId": dialog or conversation,
    }


def receipt(conversation: str, sequence: int, acked: Sequence[int], status: str = "READ", *,
            originator: str = AGENT1, role: str = "ASSIGNED_AGENT") -> dict[str, Any]:
    return {
        "sequence": sequence, "originatorId": originator,
        "originatorMetadata": {"id": originator, "role": role},
        "serverTimestamp": 1_700_000_000_000 + sequence,
        "event": {"type": "AcceptStatusEvent", "status": status, "sequenceList": list(acked)},
        "conversationId": conversation, "dialogId": conversation,
    }


async def append(target: DatabaseTarget, records: Iterable[EventRecord]) -> int:
    """Store records through the real writer; returns the head."""
    writer = EventWriter(target, batch_wait_ms=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    for item in records:
        await writer.put(item)
    stop.set()
    await task
    return writer.head


async def append_changes(target: DatabaseTarget, changes: Iterable[dict[str, Any]]) -> int:
    return await append(target, (record(c) for c in changes))


async def project(target: DatabaseTarget, **options: Any) -> Projector:
    """Run a projector until it has caught up with the head, then stop it."""
    projector = Projector(target, **options)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    connection = await asyncpg.connect(target.dsn)
    try:
        head = await connection.fetchval("SELECT position FROM log_head")
    finally:
        await connection.close()
    await projector.wait_for_position(head)
    stop.set()
    await task
    return projector


async def snapshot(connection: asyncpg.Connection, schema: str = "public",
                   ) -> dict[str, list[tuple[Any, ...]]]:
    """Every projection row (volatile columns left out), sorted by key."""
    result: dict[str, list[tuple[Any, ...]]] = {}
    for table, key in TABLES.items():
        columns = await connection.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            schema, table)
        names = ", ".join(c["column_name"] for c in columns if c["column_name"] not in VOLATILE)
        rows = await connection.fetch(f"SELECT {names} FROM {schema}.{table} ORDER BY {key}")
        result[table] = [tuple(r) for r in rows]
    return result
