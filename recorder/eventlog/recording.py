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

Each change is walked once (recorder.ums.payload.read_conversation_change and
read_messaging_change): its key, its promoted columns, its payload and, for an UPSERT, the
dialogs it names, which the sink hands to the subscriber (recorder.ums.subscriptions).

Cursors are the last stored sequence per dialog. The appender moves them in the same
transaction as the events; the in-memory copy here follows the writer's commit listener, and
the subscriber reads it directly (CursorStore is its `Cursors`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

import asyncpg
import orjson

from recorder.eventlog import sql
from recorder.eventlog.appender import AppendResult
from recorder.eventlog.records import EventRecord, QuarantinedFrame, canonical_json, dedupe_digest
from recorder.eventlog.writer import EventWriter
from recorder.logs import event
from recorder.ums import frames
from recorder.ums.connection import UmsConnection
from recorder.ums.frames import MalformedFrame, Notification
from recorder.ums.payload import dialog_ids, read_conversation_change, read_messaging_change

log = logging.getLogger(__name__)

#: Dialogs with events stored this recently are resubscribed at start even if no snapshot
#: names them (`recorder run` passes RECORDER_CLOSED_GRACE_S).
RECENT_DIALOG_SECONDS = 3600.0


class Learned(NamedTuple):
    """What an UPSERT tells the subscriber (recorder.ums.subscriptions.Subscriber.follow)."""

    conversation_id: str
    dialog_ids: list[str]
    #: the conversation's stage is closed (or, without a stage, its state)
    closed: bool
    #: its metadata time, epoch ms
    updated_ms: int | None
    #: its `conversationDetails`, as received (participants for the agent profiles)
    details: Any = None


class Recorded(NamedTuple):
    """What one pass over a notification yields."""

    records: list[EventRecord]
    #: what each UPSERT names, in order: for dialog discovery
    dialogs: list[Learned]


def is_closed(details: Any) -> bool:
    """The conversation container is closed: `stage` CLOSE, or `state` CLOSE without a stage.
    The MAIN dialog closes (`state`) before a post-conversation survey is answered."""
    if not isinstance(details, dict):
        return False
    stage = details.get("stage")
    return (stage if stage is not None else details.get("state")) == "CLOSE"


def record_notification(
    notification: Notification,
    *,
    account_id: str,
    consumer_id: str,
    session_id: str,
    received_at: float,
    frame_epoch: int = 0,
) -> Recorded:
    """One row per change, and the dialogs each UPSERT names, from one walk of each change.

    The payload is the change re-encoded once: the same JSON value as received (the column is
    jsonb, which keeps neither key order nor spacing). Where the key hashes the change, its
    canonical text is that encoding too, so no change is encoded twice.
    """
    records: list[EventRecord] = []
    learned: list[Learned] = []
    frame_type = notification.type
    if frames.is_conversation_notification(notification):
        for change in notification.changes:
            change_type, conversation_id, updated_ms, _, details = (
                read_conversation_change(change))
            if updated_ms is not None:
                key = dedupe_digest("conversation", conversation_id, change_type, updated_ms)
                payload = _json_text(change)
            else:
                canonical = canonical_json(change)
                key = dedupe_digest("conversation-content", canonical)
                payload = canonical.decode()
            if change_type == "UPSERT" and conversation_id:
                learned.append(Learned(conversation_id, dialog_ids(details),
                                       is_closed(details), updated_ms, details))
            records.append(EventRecord(
                received_at=received_at, account_id=account_id, consumer_id=consumer_id,
                session_id=session_id, kind="conversation", type=frame_type,
                change_type=change_type, conversation_id=conversation_id, dialog_id=None,
                sequence=None, originator_id=None,
                server_ts=None if updated_ms is None else updated_ms / 1000,
                dedupe_key=key, payload=payload,
            ))
    elif frames.is_messaging_notification(notification):
        for change in notification.changes:
            dialog_id, sequence, conversation_id, server_ms, event_type, originator = (
                read_messaging_change(change))
            if sequence is not None and dialog_id is not None:
                key = dedupe_digest("messaging", dialog_id, sequence)
                payload = _json_text(change)
            else:
                canonical = canonical_json(change)
                key = dedupe_digest("ephemeral", session_id, frame_epoch, canonical)
                payload = canonical.decode()
            records.append(EventRecord(
                received_at=received_at, account_id=account_id, consumer_id=consumer_id,
                session_id=session_id, kind="messaging", type=frame_type,
                change_type=event_type or None, conversation_id=conversation_id,
                dialog_id=dialog_id, sequence=sequence, originator_id=originator,
                server_ts=None if server_ms is None else server_ms / 1000,
                dedupe_key=key, payload=payload,
            ))
    else:
        for change in notification.changes or (notification.body,):
            canonical = canonical_json(change)
            records.append(EventRecord(
                received_at=received_at, account_id=account_id, consumer_id=consumer_id,
                session_id=session_id, kind="other", type=frame_type, change_type=None,
                conversation_id=None, dialog_id=None, sequence=None, originator_id=None,
                server_ts=None,
                dedupe_key=dedupe_digest("other", frame_type, session_id, canonical),
                payload=canonical.decode(),
            ))
    return Recorded(records, learned)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


class DialogFollower(Protocol):
    """Told the dialogs each UPSERT names (recorder.ums.subscriptions.Subscriber.follow)."""

    def follow(
        self, connection: UmsConnection, conversation_id: str, dialog_ids: Sequence[str], *,
        closed: bool = False, updated_ms: int | None = None,
    ) -> None: ...


@dataclasses.dataclass
class IdentityStats:
    frames: int = 0
    events: int = 0
    malformed: int = 0
    last_frame_at: float | None = None


class CursorStore:
    """Last stored sequence per followed dialog, and which consumer's dialog it is.

    Refreshed from the database for one identity each time its session opens (on whichever
    instance holds it): the dialogs worth resuming are those of conversations the projection
    shows open, and those with events stored within `recent_s` (a projection that lags or is
    absent only makes the second set matter). The subscriber `forget`s the dialogs of
    conversations it let go of, so memory follows what is open, not the log's history."""

    def __init__(self, pool: Any = None, recent_s: float = RECENT_DIALOG_SECONDS) -> None:
        self._pool = pool
        self._recent_s = recent_s
        self.sequences: dict[str, int] = {}
        self.dialogs: dict[str, tuple[str | None, str]] = {}  # dialog -> (conversation, consumer)
        self._last_metadata_ms: dict[str, int] = {}
        self._not_open: set[str] = set()  # loaded conversations the projection showed closed

    async def refresh(self, consumer_id: str) -> None:
        """Re-read one consumer's cursors and newest metadata time from the database, as its
        session opens: another instance may have recorded it since (leases move identities),
        and a cursor only ever moves forward here."""
        if self._pool is None:
            return
        try:
            rows = await self._pool.fetch(sql.LOAD_CONSUMER_CURSORS, self._recent_s, consumer_id)
            newest = await self._pool.fetchval(sql.CONSUMER_LAST_METADATA_MS, consumer_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Not fatal: cursors in memory are behind at worst, and a replay is deduplicated.
            log.warning("cursors of %s not refreshed (%s); resuming from memory", consumer_id,
                        type(exc).__name__, extra=event("recording.cursors.refresh_failed"))
            return
        self._merge(rows)
        if newest is not None:
            self._last_metadata_ms[consumer_id] = max(
                int(newest), self._last_metadata_ms.get(consumer_id, 0))

    def _merge(self, rows: Iterable[Any]) -> None:
        for row in rows:
            dialog_id = row["dialog_id"]
            if self.sequences.get(dialog_id, -1) < row["last_sequence"]:
                self.sequences[dialog_id] = row["last_sequence"]
            self.dialogs[dialog_id] = (row["conversation_id"], row["consumer_id"])
            if not row["open"] and row["conversation_id"]:
                self._not_open.add(row["conversation_id"])

    def cursor(self, dialog_id: str) -> int | None:
        return self.sequences.get(dialog_id)

    def known_dialogs(self, consumer_id: str) -> dict[str, str]:
        """The loaded dialogs of a consumer, dialog id -> conversation id."""
        return {
            dialog: conversation
            for dialog, (conversation, consumer) in self.dialogs.items()
            if consumer == consumer_id and conversation
        }

    def closed_conversations(self, consumer_id: str) -> set[str]:
        """Loaded conversations of a consumer that the projection did not show open."""
        return {conversation for conversation in self.known_dialogs(consumer_id).values()
                if conversation in self._not_open}

    def last_metadata_ms(self, consumer_id: str) -> int | None:
        return self._last_metadata_ms.get(consumer_id)

    def forget(self, dialog_ids: Iterable[str]) -> None:
        for dialog_id in dialog_ids:
            self.sequences.pop(dialog_id, None)
            found = self.dialogs.pop(dialog_id, None)
            if found is not None and found[0] is not None:
                self._not_open.discard(found[0])

    def committed(self, result: AppendResult) -> None:
        """Writer listener: follow what the log now holds (duplicates were stored before)."""
        for stored in [e for _, e in result.stored] + result.duplicates:
            if stored.kind != "messaging" or stored.sequence is None or stored.dialog_id is None:
                continue
            if self.sequences.get(stored.dialog_id, -1) < stored.sequence:
                self.sequences[stored.dialog_id] = stored.sequence
            self.dialogs.setdefault(stored.dialog_id,
                                    (stored.conversation_id, stored.consumer_id))


class AgentWatcher(Protocol):
    """Told each UPSERT's participants (recorder.history.profiles.AgentProfiles.seen)."""

    def seen(self, consumer_id: str, conversation_id: str, details: Any) -> None: ...


class RecordingSink:
    """The FrameHandler of one identity (recorder.ums.connection): every frame goes to the
    writer as log rows, read in one pass, and the dialogs its UPSERTs name go to `follower`
    (the subscriber), after the rows are queued: the frame is kept even if following fails."""

    def __init__(self, writer: EventWriter, account_id: str, follower: DialogFollower,
                 agents: AgentWatcher | None = None) -> None:
        self._writer = writer
        self._account_id = account_id
        self._follower = follower
        self._agents = agents
        self.stats = IdentityStats()

    def _seen(self, received_at: float) -> None:
        self.stats.frames += 1
        self.stats.last_frame_at = received_at

    async def on_notification(
        self, connection: UmsConnection, notification: Notification, received_at: float
    ) -> None:
        self._seen(received_at)
        records, learned = record_notification(
            notification, account_id=self._account_id, consumer_id=connection.consumer_id,
            session_id=connection.session_key, received_at=received_at,
            frame_epoch=connection.frame_epoch,
        )
        for record in records:
            await self._writer.put(record)  # blocks while the queue is full: backpressure
        self.stats.events += len(records)
        for found in learned:
            self._follower.follow(connection, found.conversation_id, found.dialog_ids,
                                  closed=found.closed, updated_ms=found.updated_ms)
            if self._agents is not None:
                self._agents.seen(connection.consumer_id, found.conversation_id, found.details)

    async def on_malformed(
        self, connection: UmsConnection, error: MalformedFrame, received_at: float
    ) -> None:
        self._seen(received_at)
        self.stats.malformed += 1
        await self._writer.put(QuarantinedFrame(
            received_at=received_at, raw=error.raw_bytes, error=error.reason,
            session_id=connection.session_key, account_id=self._account_id,
            consumer_id=connection.consumer_id,
        ))

    async def on_other(self, connection: UmsConnection, frame: Any, received_at: float) -> None:
        """A well-formed frame of a kind consumers are not sent: kept as an `other` event."""
        self._seen(received_at)
        data = getattr(frame, "data", None) or {}
        session_id = connection.session_key
        canonical = canonical_json(data)
        await self._writer.put(EventRecord(
            received_at=received_at, account_id=self._account_id,
            consumer_id=connection.consumer_id, session_id=session_id, kind="other",
            type=str(data.get("type") or getattr(frame, "kind", "")), change_type=None,
            conversation_id=None, dialog_id=None, sequence=None, originator_id=None,
            server_ts=None, dedupe_key=dedupe_digest("other", session_id, canonical),
            payload=canonical.decode(),
        ))
        self.stats.events += 1
