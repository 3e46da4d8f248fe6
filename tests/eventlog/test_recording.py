"""From notifications to the log: rows, keys and the dialogs UPSERTs name, per change in one
pass; cursors that follow commits, malformed frames in quarantine, the completeness report."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson
import pytest

from recorder.db.target import DatabaseTarget
from recorder.eventlog.recording import (
    CursorStore,
    RecordingSink,
    record_notification,
)
from recorder.eventlog.writer import EventWriter
from recorder.status import read_status
from recorder.ums import frames, payload
from recorder.ums.frames import Notification
from tests.eventlog.test_writer import POISON_TRIGGER, running
from tests.helpers import wait_until
from tests.protocol_files import example_names, example_text


def example(name: str) -> Notification:
    frame = frames.parse_frame(example_text(name))
    assert isinstance(frame, Notification)
    return frame


def rows(notification: Notification, session: str = "s1", epoch: int = 1) -> list[Any]:
    return recorded(notification, session, epoch).records


def recorded(notification: Notification, session: str = "s1", epoch: int = 1) -> Any:
    return record_notification(
        notification, account_id="71234567", consumer_id="consumer", session_id=session,
        received_at=1.0, frame_epoch=epoch,
    )


NOTIFICATION_EXAMPLES = example_names("notif_")


@pytest.mark.parametrize("name", NOTIFICATION_EXAMPLES)
def test_one_row_per_change_with_the_change_verbatim(name: str) -> None:
    notification = example(name)
    records = rows(notification)
    assert len(records) == len(notification.changes)
    for record, change in zip(records, notification.changes, strict=True):
        assert orjson.loads(record.payload) == change
        assert record.type == notification.type
        assert len(record.dedupe_key) == 16
        if record.kind == "messaging" and record.sequence is not None:
            assert record.dialog_id == change["dialogId"]


def test_keys_follow_the_source() -> None:
    replay = rows(example("notif_msg_backfill_batch.json"), session="a")
    again = rows(example("notif_msg_backfill_batch.json"), session="b", epoch=9)
    # Sequenced events: the same (dialog, sequence) is the same event, whatever the session.
    assert [r.dedupe_key for r in replay] == [r.dedupe_key for r in again]
    upsert = rows(example("notif_exconv_upsert_agent_joined.json"), session="a")
    assert upsert[0].kind == "conversation" and upsert[0].change_type == "UPSERT"
    same_change_again = rows(example("notif_exconv_upsert_agent_joined.json"), session="b")
    assert upsert[0].dedupe_key == same_change_again[0].dedupe_key
    assert upsert[0].server_ts is not None


def test_typing_repeats_are_kept_and_redeliveries_merged() -> None:
    typing = example("notif_msg_chat_state_composing_agent.json")
    first, redelivered, later = rows(typing, epoch=5), rows(typing, epoch=5), rows(typing, epoch=8)
    assert first[0].sequence is None and first[0].change_type == "ChatStateEvent"
    assert first[0].dedupe_key == redelivered[0].dedupe_key, "the same frame twice in a row"
    assert first[0].dedupe_key != later[0].dedupe_key, "typing again later is a new event"


def test_upserts_name_their_dialogs_in_the_same_pass() -> None:
    """Dialog discovery comes from the walk that builds the rows, in change order, and only
    from UPSERTs: the subscriber never reads a frame."""
    survey = example("notif_exconv_upsert_main_closed_post_survey_open.json")
    (change,) = survey.changes
    conversation = change["result"]["convId"]
    listed = [d["dialogId"] for d in change["result"]["conversationDetails"]["dialogs"]]
    details = change["result"]["conversationDetails"]
    assert details["state"] == "CLOSE" and details["stage"] == "OPEN"
    assert recorded(survey).dialogs == [
        (conversation, listed, False, details["metaDataLastUpdateTs"], details)
    ], "the MAIN dialog closed, the survey is open: the conversation is not closed yet"
    assert len(listed) == 2 and conversation in listed
    for name in NOTIFICATION_EXAMPLES:
        notification = example(name)
        expected = [
            (payload.change_conversation_id(c),
             [d.dialog_id for d in payload.dialogs(c["result"].get("conversationDetails"))],
             c["result"]["conversationDetails"].get(
                 "stage", c["result"]["conversationDetails"].get("state")) == "CLOSE",
             payload.server_timestamp_ms(c),
             c["result"]["conversationDetails"])
            for c in notification.changes
            if frames.is_conversation_notification(notification) and c.get("type") == "UPSERT"
            and payload.change_conversation_id(c)
        ]
        assert recorded(notification).dialogs == expected, name


def test_each_change_is_encoded_once_and_stays_the_same_value() -> None:
    """Where the key hashes the change, the payload is that canonical text (the column is
    jsonb: same value, key order not kept either way)."""
    typing = example("notif_msg_chat_state_composing_agent.json")
    (record,) = rows(typing)
    assert record.payload.encode() == orjson.dumps(typing.changes[0], option=orjson.OPT_SORT_KEYS)
    assert orjson.loads(record.payload) == typing.changes[0]
    other = Notification("x.Unheard", "Unheard", {"b": 1, "a": [2]}, (), None, "", {})
    (record,) = rows(other)
    assert record.kind == "other" and orjson.loads(record.payload) == {"b": 1, "a": [2]}


class FakeConnection:
    def __init__(self) -> None:
        self.session_id = uuid.uuid4()
        self.session_key = str(self.session_id)
        self.consumer_id = "consumer-1"
        self.frame_epoch = 1


class Followed:
    """A DialogFollower that writes down what it was told."""

    def __init__(self, writer: EventWriter | None = None) -> None:
        self.calls: list[tuple[Any, str, list[str], bool, int | None]] = []
        self._writer = writer
        self.rows_queued_before: list[int] = []

    def follow(self, connection: Any, conversation_id: str, dialog_ids: Sequence[str], *,
               closed: bool = False, updated_ms: int | None = None) -> None:
        self.calls.append((connection, conversation_id, list(dialog_ids), closed, updated_ms))
        if self._writer is not None:
            self.rows_queued_before.append(self._writer.queue.qsize() + self._writer.head)


async def test_the_sink_queues_the_rows_then_hands_on_the_dialogs(
    database: DatabaseTarget,
) -> None:
    writer = EventWriter(database, batch_wait_ms=20)
    followed = Followed(writer)
    sink = RecordingSink(writer, "71234567", follower=followed)
    connection: Any = FakeConnection()
    survey = example("notif_exconv_upsert_main_closed_post_survey_open.json")
    async with running(writer):
        await sink.on_notification(connection, survey, 1.0)
        await asyncio.wait_for(writer.wait_for_head(1), 30)
    assert followed.rows_queued_before == [1], "the row is queued before the dialogs go on"
    ((seen_on, *told),) = followed.calls
    assert seen_on is connection and tuple(told) == recorded(survey).dialogs[0][:4]
    assert sink.stats.frames == 1 and sink.stats.events == 1


async def test_cursors_move_only_with_committed_events(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    await db.execute(POISON_TRIGGER)
    writer = EventWriter(database, batch_wait_ms=20)
    cursors = CursorStore()
    writer.add_listener(cursors.committed)
    sink = RecordingSink(writer, "71234567", follower=Followed())
    connection: Any = FakeConnection()

    def change(sequence: int, text: str) -> dict[str, Any]:
        return {"sequence": sequence, "originatorId": "a", "serverTimestamp": 1000 + sequence,
                "dialogId": "d1", "conversationId": "c1",
                "event": {"type": "ContentEvent", "contentType": "text/plain", "message": text}}

    def notification(*changes: dict[str, Any]) -> Notification:
        body = {"changes": list(changes)}
        return Notification("ms.MessagingEventNotification", "MessagingEventNotification",
                            body, tuple(changes), None, orjson.dumps(body).decode(), body)

    async with running(writer):
        await sink.on_notification(
            connection, notification(change(0, "a"), change(1, "b")), 1.0)
        await asyncio.wait_for(writer.wait_for_head(2), 30)
        assert cursors.cursor("d1") == 1
        await sink.on_notification(connection, notification(change(2, "poison")), 2.0)
        await wait_until(lambda: writer.stats.quarantined == 1)
    assert cursors.cursor("d1") == 1, "a rolled-back event must not move the cursor"
    stored = await db.fetchrow("SELECT last_sequence, conversation_id FROM dialog_cursors")
    assert tuple(stored) == (1, "c1")
    pool = await asyncpg.create_pool(database.dsn, min_size=1, max_size=1)
    try:
        reloaded = CursorStore(pool)
        await reloaded.refresh("consumer-1")
    finally:
        await pool.close()
    assert reloaded.cursor("d1") == 1
    assert reloaded.known_dialogs("consumer-1") == {"d1": "c1"}


async def test_the_cursor_store_loads_only_what_is_worth_resuming(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    """As a session opens: the dialogs of conversations the projection shows open (however old their
    cursor), and those stored to lately; not the closed history. The newest metadata time per
    consumer comes along, for the snapshot's lower bound."""
    await db.execute("""
        INSERT INTO dialog_cursors (dialog_id, conversation_id, consumer_id, last_sequence,
                                    updated_at)
        VALUES ('d-open', 'c-open', 'consumer-1', 5, now() - interval '3 days'),
               ('d-survey', 'c-survey', 'consumer-1', 2, now() - interval '3 days'),
               ('d-recent', 'c-recent', 'consumer-1', 7, now() - interval '10 minutes'),
               ('d-old', 'c-old', 'consumer-1', 9, now() - interval '3 days'),
               ('d-other', 'c-other', 'consumer-2', 1, now())
    """)
    await db.execute("""
        INSERT INTO conversations (conversation_id, consumer_id, state, stage,
                                   meta_data_last_update_ts, first_position, last_position)
        VALUES ('c-open', 'consumer-1', 'OPEN', 'OPEN', 1000, 1, 1),
               ('c-survey', 'consumer-1', 'CLOSE', 'OPEN', 3000, 2, 2),
               ('c-old', 'consumer-1', 'CLOSE', 'CLOSE', 2000, 3, 3),
               ('c-other', 'consumer-2', 'OPEN', 'OPEN', 500, 4, 4)
    """)
    pool = await asyncpg.create_pool(database.dsn, min_size=1, max_size=1)
    try:
        store = CursorStore(pool, recent_s=3600)
        for consumer in ("consumer-1", "consumer-2", "consumer-3"):
            await store.refresh(consumer)
    finally:
        await pool.close()
    assert store.known_dialogs("consumer-1") == {
        "d-open": "c-open", "d-survey": "c-survey", "d-recent": "c-recent"}
    assert store.cursor("d-open") == 5 and store.cursor("d-old") is None
    assert store.closed_conversations("consumer-1") == {"c-recent"}, (
        "recent, and not shown open (the projection has not seen it): its grace starts now")
    assert store.last_metadata_ms("consumer-1") == 3000
    assert store.last_metadata_ms("consumer-2") == 500
    assert store.last_metadata_ms("consumer-3") is None
    store.forget(["d-recent", "d-open"])
    assert store.known_dialogs("consumer-1") == {"d-survey": "c-survey"}
    assert store.cursor("d-open") is None and store.closed_conversations("consumer-1") == set()


async def test_a_session_opening_refreshes_its_consumer_from_the_database(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    """Another instance may have recorded the identity since: its cursors and metadata time
    are read again for that consumer alone, and a cursor never moves back."""
    await db.execute("""
        INSERT INTO dialog_cursors (dialog_id, conversation_id, consumer_id, last_sequence)
        VALUES ('d1', 'c1', 'consumer-1', 5), ('d2', 'c2', 'consumer-2', 9)
    """)
    pool = await asyncpg.create_pool(database.dsn, min_size=1, max_size=1)
    try:
        store = CursorStore(pool, recent_s=3600)
        await store.refresh("consumer-1")
        assert store.known_dialogs("consumer-1") == {"d1": "c1"}
        assert store.known_dialogs("consumer-2") == {} and store.cursor("d2") is None
        assert store.last_metadata_ms("consumer-1") is None
        await db.execute("UPDATE dialog_cursors SET last_sequence = 40 WHERE dialog_id = 'd1'")
        await db.execute("""
            INSERT INTO conversations (conversation_id, consumer_id, state, stage,
                                       meta_data_last_update_ts, first_position, last_position)
            VALUES ('c1', 'consumer-1', 'OPEN', 'OPEN', 7000, 1, 1)""")
        await store.refresh("consumer-1")
        assert store.cursor("d1") == 40 and store.last_metadata_ms("consumer-1") == 7000
        store.sequences["d1"] = 60  # this instance committed further meanwhile
        await store.refresh("consumer-1")
        assert store.cursor("d1") == 60, "never back"
    finally:
        await pool.close()


async def test_malformed_and_other_frames_are_kept(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    writer = EventWriter(database)
    sink = RecordingSink(writer, "71234567", follower=Followed())
    connection: Any = FakeConnection()
    async with running(writer):
        try:
            frames.parse_frame(b"\xff not utf-8 {")
        except frames.MalformedFrame as error:
            await sink.on_malformed(connection, error, 1.0)
        other = frames.parse_frame('{"kind":"surprise","type":"x.New","body":{"a":1}}')
        await sink.on_other(connection, other, 2.0)
        await asyncio.wait_for(writer.wait_for_head(1), 30)
        await wait_until(lambda: writer.stats.quarantined == 1)
    raw, session = await db.fetchrow("SELECT raw, session_id::text FROM quarantine")
    assert raw == b"\xff not utf-8 {" and session == str(connection.session_id)
    kind, payload = await db.fetchrow("SELECT kind, payload::text FROM events")
    assert kind == "other" and orjson.loads(payload)["body"] == {"a": 1}
    assert sink.stats.malformed == 1 and sink.stats.frames == 2


async def test_status_reports_identities_and_sequence_holes(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    session = uuid.uuid4()
    await db.execute(
        "INSERT INTO sessions (session_id, account_id, consumer_id, identity_name, url, "
        "frames, events, duplicates, quarantined, last_frame_at) "
        "VALUES ($1, '71234567', 'consumer-1', 'web', 'ws://x', 9, 8, 2, 1, now())", session,
    )
    writer = EventWriter(database)
    sink = RecordingSink(writer, "71234567", follower=Followed())
    connection: Any = FakeConnection()
    connection.session_id, connection.session_key = session, str(session)
    changes = [
        {"sequence": s, "originatorId": "a", "serverTimestamp": 1, "dialogId": "d1",
         "conversationId": "c1", "event": {"type": "ContentEvent", "message": "m"}}
        for s in (0, 1, 4, 5, 9)
    ]
    body = {"changes": changes}
    async with running(writer):
        await sink.on_notification(connection, Notification(
            "ms.MessagingEventNotification", "MessagingEventNotification", body,
            tuple(changes), None, "", body), 1.0)
        await asyncio.wait_for(writer.wait_for_head(5), 30)
    status = await read_status(database)
    (identity,) = status.identities
    assert (identity.identity, identity.connection, identity.events) == ("web", "connected", 5)
    assert (identity.duplicates, identity.quarantined) == (2, 1)
    holes = [(h.dialog_id, h.first_missing, h.last_missing, h.session_id) for h in status.holes]
    assert holes == [("d1", 2, 3, str(session)), ("d1", 6, 8, str(session))]
    assert "sequence holes" in status.as_text() and "identity web" in status.as_text()
