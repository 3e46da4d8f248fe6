"""The fold: conversation state (LWW, replace, DELETE, transfers) and messages and receipts,
from the protocol's example frames and from synthetic changes, on real PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import orjson
import pytest

from recorder.db.target import DatabaseTarget
from recorder.projection.fold import apply_events
from tests.projection_helpers import (
    AGENT1,
    AGENT2,
    BOT,
    CONSUMER,
    CONV,
    OLD_CONV,
    SURVEY,
    append_changes,
    content,
    delete,
    example_changes,
    log_rows,
    project,
    receipt,
    upsert,
)

CONTROLLER = "e1f3a5c7-9b2d-5e4f-8a6c-0d2e4f6a8b90"
ENDING_A = [
    "notif_exconv_upsert_open.json", "notif_exconv_upsert_agent_joined.json",
    "notif_exconv_upsert_transfer_to_skill.json",
    "notif_exconv_upsert_transfer_suggested_agent.json",
    "notif_exconv_upsert_closed_with_csat.json",
]


def ts(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


async def conversation(db: asyncpg.Connection, conversation_id: str = CONV) -> dict[str, Any]:
    row = await db.fetchrow("SELECT * FROM conversations WHERE conversation_id = $1",
                            conversation_id)
    assert row is not None, f"no conversation {conversation_id}"
    found = dict(row)
    for column in ("transfers", "assignments", "details"):
        found[column] = orjson.loads(found[column]) if found[column] is not None else None
    return found


async def people(db: asyncpg.Connection, conversation_id: str = CONV) -> set[tuple[Any, ...]]:
    rows = await db.fetch("SELECT participant_id, role, state FROM participants "
                          "WHERE conversation_id = $1", conversation_id)
    return {tuple(r) for r in rows}


async def test_ending_a_transfers_close_and_csat(database: DatabaseTarget,
                                                 db: asyncpg.Connection) -> None:
    # Out of order on purpose: the close arrives first, the transfers after it.
    names = [ENDING_A[-1], *ENDING_A[:-1]]
    await append_changes(database, [c for name in names for c in example_changes(name)])
    await project(database)

    c = await conversation(db)
    assert (c["state"], c["stage"], c["close_reason"]) == ("CLOSE", "CLOSE", "AGENT")
    assert (c["csat_rate"], c["csat_resolution_confirmation"], c["csat_status"]) == (
        4, True, "FILLED")
    assert (c["ttr_type"], c["ttr_value"], c["effective_ttr"]) == ("PRIORITIZED", 600, None)
    assert (c["skill_id"], c["brand_id"]) == ("1284356722", "71234567")
    assert (c["start_ts"], c["end_ts"]) == (ts(1732530000000), ts(1732531260000))
    assert c["meta_data_last_update_ts"] == 1732531308000
    assert (c["consumer_id"], c["account_id"], c["deleted"]) == (CONSUMER, "71234567", False)
    assert (c["first_position"], c["last_position"], c["state_position"]) == (1, 5, 1)
    assert c["transfers"] == [
        {"ts": 1732530041250, "kind": "agent", "from": [], "to": [AGENT1]},
        {"ts": 1732530215000, "kind": "skill", "from": "1284356710", "to": "1284356722"},
        {"ts": 1732530215000, "kind": "agent", "from": [AGENT1], "to": []},
        {"ts": 1732530230000, "kind": "agent", "from": [], "to": [AGENT2]},
    ]
    assert await people(db) == {
        (CONSUMER, "CONSUMER", "ACTIVE"), (AGENT1, "READER", "ACTIVE"),
        (AGENT2, "ASSIGNED_AGENT", "ACTIVE"),
    }
    dialog = await db.fetchrow("SELECT * FROM dialogs WHERE dialog_id = $1", CONV)
    assert dialog is not None
    assert (dialog["conversation_id"], dialog["dialog_type"], dialog["state"],
            dialog["closed_by"], dialog["end_ts"]) == (CONV, "MAIN", "CLOSE", "AGENT",
                                                       ts(1732531260000))


async def test_suggested_agent_and_effective_ttr(database: DatabaseTarget,
                                                 db: asyncpg.Connection) -> None:
    await append_changes(database, example_changes(ENDING_A[3]))
    await project(database)
    c = await conversation(db)
    assert c["effective_ttr"] == ts(1732530830000)
    assert (AGENT2, "ASSIGNED_AGENT", "SUGGESTED") in await people(db)


async def test_ending_b_post_survey_dialog(database: DatabaseTarget,
                                           db: asyncpg.Connection) -> None:
    await append_changes(database, example_changes(
        "notif_exconv_upsert_main_closed_post_survey_open.json"))
    await project(database)
    c = await conversation(db)
    assert (c["state"], c["stage"], c["close_reason"], c["end_ts"]) == (
        "CLOSE", "OPEN", "CONSUMER", None)
    survey = await db.fetchrow("SELECT * FROM dialogs WHERE dialog_id = $1", SURVEY)
    assert survey is not None
    assert (survey["dialog_type"], survey["state"], survey["conversation_id"]) == (
        "POST_SURVEY", "OPEN", CONV)
    assert (BOT, "AGENT", "ACTIVE") in await people(db)
    assert (CONTROLLER, "CONTROLLER", "ACTIVE") in await people(db)

    await append_changes(database, example_changes(
        "notif_exconv_upsert_survey_completed_stage_close.json"))
    await project(database)
    c = await conversation(db)
    assert (c["stage"], c["end_ts"]) == ("CLOSE", ts(1732531595000))
    rows = await db.fetch("SELECT dialog_id, state, closed_by, closed_cause FROM dialogs "
                          "ORDER BY dialog_id")
    assert [tuple(r) for r in rows] == [
        (CONV, "CLOSE", "CONSUMER", "Closed by consumer"),
        (SURVEY, "CLOSE", "AGENT", "Completed"),
    ]


async def test_legacy_participants_map(database: DatabaseTarget, db: asyncpg.Connection) -> None:
    await append_changes(database, example_changes(
        "notif_exconv_upsert_legacy_participants_map.json"))
    await project(database)
    c = await conversation(db)
    # No metaDataLastUpdateTs: the older lastUpdateTime is the version.
    assert (c["meta_data_last_update_ts"], c["state"], c["stage"]) == (1732530041250, "OPEN", None)
    assert await people(db) == {(CONSUMER, "CONSUMER", None), (AGENT1, "ASSIGNED_AGENT", None)}
    assert await db.fetchval("SELECT count(*) FROM dialogs") == 0


async def test_snapshot_batch_and_delete(database: DatabaseTarget, db: asyncpg.Connection) -> None:
    await append_changes(database, [*example_changes("notif_exconv_multi_change_batch.json"),
                                    *example_changes("notif_exconv_delete.json")])
    await project(database)
    old = await conversation(db, OLD_CONV)
    # The DELETE carries the same timestamp as the stored state: it applies, state is kept.
    assert (old["deleted"], old["deleted_ts"], old["state"]) == (True, 1732357200000, "CLOSE")
    assert (old["csat_rate"], old["csat_resolution_confirmation"], old["csat_status"]) == (
        2, False, "PARTIALLY_FILLED")
    assert (await conversation(db))["deleted"] is False


async def test_older_upsert_is_ignored_and_newer_replaces(database: DatabaseTarget,
                                                          db: asyncpg.Connection) -> None:
    await append_changes(database, [
        upsert("c1", 2000, skill="200", agents=[AGENT2]),
        upsert("c1", 1000, skill="100", agents=[AGENT1], readers=[BOT]),  # older: ignored
    ])
    await project(database)
    c = await conversation(db, "c1")
    assert (c["skill_id"], c["meta_data_last_update_ts"], c["state_position"]) == ("200", 2000, 1)
    assert await people(db, "c1") == {(CONSUMER, "CONSUMER", "ACTIVE"),
                                      (AGENT2, "ASSIGNED_AGENT", "ACTIVE")}
    # ... but the older one still counts for transfers, in timestamp order.
    assert c["transfers"] == [
        {"ts": 2000, "kind": "skill", "from": "100", "to": "200"},
        {"ts": 2000, "kind": "agent", "from": [AGENT1], "to": [AGENT2]},
    ]

    await append_changes(database, [upsert("c1", 3000, skill="200", agents=[], state="CLOSE")])
    await project(database)
    c = await conversation(db, "c1")
    assert (c["state"], c["meta_data_last_update_ts"]) == ("CLOSE", 3000)
    assert await people(db, "c1") == {(CONSUMER, "CONSUMER", "ACTIVE")}  # replaced, not merged


async def test_equal_timestamps_keep_the_stored_state(db: asyncpg.Connection) -> None:
    # The log's keys make this unreachable with a timestamp; the fold decides anyway.
    first, second = upsert("c1", 1000, skill="first"), upsert("c1", 1000, skill="second")
    await apply_events(db, log_rows([first], [1]))
    await apply_events(db, log_rows([second], [2]))
    assert (await conversation(db, "c1"))["skill_id"] == "first"
    await db.execute("TRUNCATE conversations, participants, dialogs")
    await apply_events(db, log_rows([second], [2]))  # out of order: still the earlier position
    await apply_events(db, log_rows([first], [1]))
    assert (await conversation(db, "c1"))["skill_id"] == "first"


async def test_delete_rules(db: asyncpg.Connection) -> None:
    await apply_events(db, log_rows([upsert("c1", 2000), delete("c1", 1000)], [1, 2]))
    assert (await conversation(db, "c1"))["deleted"] is False  # older than the state: ignored
    await apply_events(db, log_rows([delete("c1", 3000)], [3]))
    c = await conversation(db, "c1")
    assert (c["deleted"], c["deleted_ts"], c["state"]) == (True, 3000, "OPEN")
    await apply_events(db, log_rows([upsert("c1", 4000, state="CLOSE")], [4]))
    c = await conversation(db, "c1")
    assert (c["deleted"], c["state"]) == (False, "CLOSE")  # a newer state is back in scope
    await apply_events(db, log_rows([delete("c1", None), upsert("c1", 5000)], [5, 6]))
    c = await conversation(db, "c1")
    assert (c["deleted"], c["deleted_ts"], c["meta_data_last_update_ts"]) == (True, None, 5000)
    # A DELETE of a conversation never seen: a row that says so, and nothing more.
    await apply_events(db, log_rows([delete("c2", 1000)], [7]))
    c = await conversation(db, "c2")
    assert (c["deleted"], c["state"], c["state_position"], c["transfers"]) == (
        True, None, None, [])


async def test_messages_from_every_example(database: DatabaseTarget,
                                           db: asyncpg.Connection) -> None:
    names = [
        "notif_msg_backfill_batch.json", "notif_msg_content_text_from_agent.json",
        "notif_msg_content_text_from_consumer_echo.json",
        "notif_msg_rich_content_from_agent.json",
        "notif_msg_accept_status_accept_from_consumer.json",
        "notif_msg_accept_status_read_from_agent.json",
        "notif_msg_chat_state_composing_agent.json", "notif_msg_chat_state_active_consumer.json",
        "notif_msg_hosted_file_from_consumer.json",
        "notif_msg_private_agent_message_audience.json",
        "notif_msg_resume_after_reconnect.json", "notif_msg_post_survey_question.json",
        "notif_msg_post_survey_action_echo.json",
    ]
    await append_changes(database, [c for name in names for c in example_changes(name)])
    await project(database)
    rows = {(r["dialog_id"], r["sequence"]): dict(r) for r in await db.fetch(
        "SELECT * FROM messages")}
    # Receipts (1, 3, 7, 8, 12 and the survey's 2) and typing indicators are not messages.
    assert sorted(rows) == sorted([(CONV, s) for s in (0, 2, 4, 5, 6, 9, 10, 11)]
                                  + [(SURVEY, 0), (SURVEY, 1)])
    first = rows[(CONV, 0)]
    assert (first["originator_id"], first["originator_role"], first["content_type"],
            first["text"], first["server_ts"]) == (
        CONSUMER, "CONSUMER", "text/plain", "Hi, my invoice #A-2291 was charged twice.",
        ts(1732530000015))
    assert rows[(CONV, 4)]["originator_role"] == "ASSIGNED_AGENT"
    rich = rows[(CONV, 6)]
    assert (rich["event_type"], rich["content_type"], rich["text"]) == (
        "RichContentEvent", "rich-content", None)
    assert orjson.loads(rich["rich_content"])["elements"][0]["text"] == "Refund #R-77120"
    assert orjson.loads(rich["metadata"]) == [{"type": "ExternalId", "id": "refund-card-R-77120"}]
    hosted = rows[(CONV, 9)]
    assert hosted["content_type"] == "hosted/file" and hosted["text"] is None
    assert orjson.loads(hosted["file"])["fileType"] == "PNG"
    assert rows[(CONV, 10)]["audience"] == "AGENTS_AND_MANAGERS"
    question = rows[(SURVEY, 1)]
    assert question["originator_role"] == "AGENT"
    assert orjson.loads(question["metadata"])[0]["type"] == "Question"
    assert "quickReplies" in orjson.loads(question["event"])  # kept raw: no column for it
    assert first["event"] is None

    receipts = {tuple(r) for r in await db.fetch(
        "SELECT dialog_id, sequence, participant_id, status FROM receipts")}
    assert receipts == {
        (CONV, 0, AGENT1, "READ"), (CONV, 2, CONSUMER, "ACCEPT"), (CONV, 4, CONSUMER, "ACCEPT"),
        (CONV, 6, CONSUMER, "ACCEPT"), (CONV, 5, AGENT1, "READ"), (CONV, 9, AGENT1, "READ"),
        (SURVEY, 1, CONSUMER, "ACTION"),
    }
    c = await conversation(db)  # messages alone make a conversation row, without state
    assert (c["state"], c["state_position"], c["consumer_id"]) == (None, None, CONSUMER)


async def test_rich_content_as_text_and_unknown_events(db: asyncpg.Connection) -> None:
    as_text = content("c1", 1)
    as_text["event"] = {"type": "RichContentEvent",
                        "content": orjson.dumps({"type": "vertical", "elements": []}).decode()}
    future = content("c1", 2)
    future["event"] = {"type": "FutureEvent", "shiny": True}
    await apply_events(db, log_rows([as_text, future], [1, 2]))
    rows = {r["sequence"]: r for r in await db.fetch("SELECT * FROM messages")}
    assert orjson.loads(rows[1]["rich_content"]) == {"type": "vertical", "elements": []}
    assert (rows[2]["event_type"], rows[2]["content_type"], rows[2]["text"]) == (
        "FutureEvent", None, None)
    assert orjson.loads(rows[2]["event"]) == {"type": "FutureEvent", "shiny": True}


async def test_unreadable_payloads_are_skipped_not_fatal(
        db: asyncpg.Connection, caplog: pytest.LogCaptureFixture) -> None:
    rows = log_rows([content("c1", 1), content("c1", 2)], [1, 2])
    rows[0] = rows[0]._replace(payload='{"sequence": 1, "dialogId": ')  # not JSON at all
    rows.append(rows[1]._replace(position=3, payload="[1, 2]"))
    await apply_events(db, rows)
    assert await db.fetchval("SELECT count(*) FROM messages") == 1
    assert "skipped 2 events it cannot read, at positions [1, 3]" in caplog.text


async def test_receipt_before_its_message_and_replays(db: asyncpg.Connection) -> None:
    early = receipt("c1", 5, [3, 4], "READ")
    await apply_events(db, log_rows([early], [10]))
    assert await db.fetchval("SELECT count(*) FROM receipts") == 2
    await apply_events(db, log_rows([content("c1", 3, "late")], [11]))
    joined = await db.fetch("""
        SELECT m.sequence, m.text, r.participant_id, r.status FROM messages m
        JOIN receipts r USING (dialog_id, sequence)""")
    assert [tuple(r) for r in joined] == [(3, "late", AGENT1, "READ")]
    # Applying the same events again (a replay) changes nothing.
    before = [tuple(r) for r in await db.fetch("SELECT * FROM receipts ORDER BY sequence")]
    await apply_events(db, log_rows([early, content("c1", 3, "late")], [10, 11]))
    assert [tuple(r) for r in await db.fetch("SELECT * FROM receipts ORDER BY sequence")] == before
    assert await db.fetchval("SELECT count(*) FROM messages") == 1
