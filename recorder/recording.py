"""From notifications to event rows: one row per change, keys derived from the source.

Dedupe keys (design.md section 2):
- messaging changes with a sequence (content, rich content, receipts, unknown future events):
  (dialog_id, sequence);
- conversation changes: (conversation_id, change type, metaDataLastUpdateTs), or a hash of the
  canonical change when the timestamp is missing;
- chat state (no sequence, never replayed): the session, the connection's frame epoch and the
  change. Typing notifications carry nothing that tells a second `COMPOSING` from the first,
  so hashing the payload alone (design.md's key) would drop every repeat. The epoch advances
  with each frame that differs from the previous one, so only a frame delivered twice in a
  row shares a key.
- anything else (unsolicited or unknown notifications): a hash of type, change and session.

Cursors are the last stored sequence per dialog. The appender moves them in the same
transaction as the events; the in-memory copy here follows the writer's commit listener.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import asyncpg
import orjson

from recorder import sql
from recorder.appender import AppendResult
from recorder.events import EventRecord, QuarantinedFrame, canonical_json, dedupe_digest
from recorder.ums import frames
from recorder.ums.connection import UmsConnection
from recorder.ums.frames import MalformedFrame, Notification
from recorder.writer import EventWriter

#: Dialogs active this recently are resubscribed at start even if no snapshot names them.
RECENT_DIALOG_SECONDS = 24 * 3600


def _dump(value: Any) -> str:
    return orjson.dumps(value).decode()


def events_from_notification(
    notification: Notification,
    *,
    account_id: str,
    consumer_id: str,
    session_id: str,
    received_at: float,
    frame_epoch: int = 0,
) -> list[EventRecord]:
    def record(**fields: Any) -> EventRecord:
        return EventRecord(
            received_at=received_at, account_id=account_id, consumer_id=consumer_id,
            session_id=session_id, type=notification.type, **fields,
        )

    rows: list[EventRecord] = []
    if frames.is_conversation_notification(notification):
        for change in notification.changes:
            change_type = change.get("type") if isinstance(change.get("type"), str) else None
            conversation_id = frames.change_conversation_id(change)
            updated_ms = frames.server_timestamp_ms(change)
            key = (
                dedupe_digest("conversation", conversation_id, change_type, updated_ms)
                if updated_ms is not None
                else dedupe_digest("conversation-content", canonical_json(change))
            )
            rows.append(record(
                kind="conversation", change_type=change_type, conversation_id=conversation_id,
                dialog_id=None, sequence=None, originator_id=None,
                server_ts=None if updated_ms is None else updated_ms / 1000,
                dedupe_key=key, payload=_dump(change),
            ))
    elif frames.is_messaging_notification(notification):
        for change in notification.changes:
            sequence = frames.change_sequence(change)
            dialog_id = frames.change_dialog_id(change)
            server_ms = frames.server_timestamp_ms(change)
            key = (
                dedupe_digest("messaging", dialog_id, sequence)
                if sequence is not None and dialog_id is not None
                else dedupe_digest("ephemeral", session_id, frame_epoch, canonical_json(change))
            )
            rows.append(record(
                kind="messaging", change_type=frames.event_type(change) or None,
                conversation_id=frames.change_conversation_id(change), dialog_id=dialog_id,
                sequence=sequence, originator_id=frames.originator_id(change),
                server_ts=None if server_ms is None else server_ms / 1000,
                dedupe_key=key, payload=_dump(change),
            ))
    else:
        changes = notification.changes or (notification.body,)
        for change in changes:
            rows.append(record(
                kind="other", change_type=None, conversation_id=None, dialog_id=None,
                sequence=None, originator_id=None, server_ts=None,
                dedupe_key=dedupe_digest(
                    "other", notification.type, session_id, canonical_json(change)
                ),
                payload=_dump(change),
            ))
    return rows


@dataclasses.dataclass
class IdentityStats:
    frames: int = 0
    events: int = 0
    malformed: int = 0
    last_frame_at: float | None = None


class CursorStore:
    """Last stored sequence per dialog, and which consumer's dialog it is."""

    def __init__(self) -> None:
        self.sequences: dict[str, int] = {}
        self.dialogs: dict[str, tuple[str | None, str]] = {}  # dialog -> (conversation, consumer)
        self._recent: set[str] = set()

    async def load(self, pool: Any) -> None:
        now = time.time()
        for row in await pool.fetch(sql.LOAD_CURSORS):
            self.sequences[row["dialog_id"]] = row["last_sequence"]
            self.dialogs[row["dialog_id"]] = (row["conversation_id"], row["consumer_id"])
            if now - row["updated_at"].timestamp() < RECENT_DIALOG_SECONDS:
                self._recent.add(row["dialog_id"])

    def cursor(self, dialog_id: str) -> int | None:
        return self.sequences.get(dialog_id)

    def known_dialogs(self, consumer_id: str) -> dict[str, str]:
        """Recently active dialogs of a consumer, dialog id -> conversation id."""
        return {
            dialog: conversation
            for dialog, (conversation, consumer) in self.dialogs.items()
            if consumer == consumer_id and conversation and dialog in self._recent
        }

    def committed(self, result: AppendResult) -> None:
        """Writer listener: follow what the log now holds (duplicates were stored before)."""
        for event in [e for _, e in result.stored] + result.duplicates:
            if event.kind != "messaging" or event.sequence is None or event.dialog_id is None:
                continue
            if self.sequences.get(event.dialog_id, -1) < event.sequence:
                self.sequences[event.dialog_id] = event.sequence
            self.dialogs.setdefault(event.dialog_id, (event.conversation_id, event.consumer_id))


class RecordingSink:
    """The EventSink of one identity: every frame goes to the writer; cursors come from the log."""

    def __init__(self, writer: EventWriter, cursors: CursorStore, account_id: str) -> None:
        self._writer = writer
        self._cursors = cursors
        self._account_id = account_id
        self.stats = IdentityStats()

    def _seen(self, received_at: float) -> None:
        self.stats.frames += 1
        self.stats.last_frame_at = received_at

    async def notification(
        self, connection: UmsConnection, notification: Notification, received_at: float
    ) -> None:
        self._seen(received_at)
        rows = events_from_notification(
            notification, account_id=self._account_id, consumer_id=connection.consumer_id,
            session_id=str(connection.session_id), received_at=received_at,
            frame_epoch=connection.frame_epoch,
        )
        for row in rows:
            await self._writer.put(row)  # blocks while the queue is full: backpressure
        self.stats.events += len(rows)

    async def malformed(
        self, connection: UmsConnection, error: MalformedFrame, received_at: float
    ) -> None:
        self._seen(received_at)
        self.stats.malformed += 1
        await self._writer.put(QuarantinedFrame(
            received_at=received_at, raw=error.raw_bytes, error=error.reason,
            session_id=str(connection.session_id), account_id=self._account_id,
            consumer_id=connection.consumer_id,
        ))

    async def other(self, connection: UmsConnection, frame: Any, received_at: float) -> None:
        """A well-formed frame of a kind consumers are not sent: kept as an `other` event."""
        self._seen(received_at)
        data = getattr(frame, "data", None) or {}
        session_id = str(connection.session_id)
        await self._writer.put(EventRecord(
            received_at=received_at, account_id=self._account_id,
            consumer_id=connection.consumer_id, session_id=session_id, kind="other",
            type=str(data.get("type") or getattr(frame, "kind", "")), change_type=None,
            conversation_id=None, dialog_id=None, sequence=None, originator_id=None,
            server_ts=None, dedupe_key=dedupe_digest("other", session_id, canonical_json(data)),
            payload=_dump(data),
        ))
        self.stats.events += 1

    def cursor(self, dialog_id: str) -> int | None:
        return self._cursors.cursor(dialog_id)

    def known_dialogs(self, consumer_id: str) -> dict[str, str]:
        return self._cursors.known_dialogs(consumer_id)


async def load_cursors(pool: asyncpg.Pool) -> CursorStore:
    store = CursorStore()
    await store.load(pool)
    return store
