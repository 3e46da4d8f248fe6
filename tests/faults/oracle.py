"""The checks every fault scenario ends with: the log against the simulator's truth.

The truth is the simulator's model, never what it sent: `stored_events` of every dialog of
every consumer (what a correct client must end up with, whatever frames were dropped,
doubled, reordered or mangled) and each conversation's current `conversationDetails`.

- Log: every stored (dialog_id, sequence) is in `events` (kind 'messaging') exactly once and
  no other sequenced event is there; each conversation's final details (by
  metaDataLastUpdateTs) were recorded verbatim, and no conversation change twice; no event
  of a conversation or dialog the simulator does not have; every event's session is a row
  of `sessions` (design.md section 2); positions run 1..head.
- Projection: caught up with the head, equal to `rebuild`, and equal to the simulator's final
  state: the conversation row (state, stage, close reason, skill, brand, csat, ttr, effective
  TTR, times, and `details` verbatim), its participants and dialogs (ids, types, states,
  closers, participantsDetails), its messages and its receipts.

What counts as a message follows recorder/projection/rows.py: every sequenced event except
receipts (`AcceptStatusEvent`, which go to `receipts` instead), that is content (text and
hosted files), rich content, and event types the projection does not know (kept raw). So per
dialog the messages must be exactly the simulator's stored events minus its receipts, with
type, author, text, file and rich content as stored; and `receipts` must hold exactly one row
per (dialog, acknowledged sequence, author, status) of the stored receipts.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
from collections.abc import Iterable
from typing import Any

import asyncpg
import orjson

from recorder.db.target import DatabaseTarget
from recorder.projection import PROJECTION_NAME
from recorder.projection.rebuild import rebuild
from recorder.simulator import Simulator
from tests.faults.harness import poll
from tests.helpers import assert_log_contiguous

Json = dict[str, Any]
Key = tuple[str, int]  # (dialog_id, sequence)

RECEIPT = "AcceptStatusEvent"
HOSTED_FILE = "hosted/file"

RECORDED_SEQUENCED = """
SELECT dialog_id, sequence, count(*) AS copies
FROM events WHERE kind = 'messaging' AND sequence IS NOT NULL
GROUP BY dialog_id, sequence
"""
# Per conversation: its newest recorded UPSERT, by the platform's version.
LATEST_UPSERTS = """
SELECT DISTINCT ON (conversation_id) conversation_id, payload::text AS payload
FROM events WHERE kind = 'conversation' AND change_type = 'UPSERT'
ORDER BY conversation_id,
         (payload #>> '{result,conversationDetails,metaDataLastUpdateTs}')::bigint DESC NULLS LAST
"""
CONVERSATION_CHANGES_TWICE = """
SELECT conversation_id, change_type,
       payload #>> '{result,conversationDetails,metaDataLastUpdateTs}' AS version, count(*) AS n
FROM events WHERE kind = 'conversation'
GROUP BY 1, 2, 3 HAVING count(*) > 1
"""
RECORDED_CONVERSATIONS = """
SELECT DISTINCT conversation_id FROM events WHERE kind IN ('conversation', 'messaging')
"""
RECORDED_DIALOGS = "SELECT DISTINCT dialog_id FROM events WHERE kind = 'messaging'"
# design.md section 2: an event's session_id is "the websocket session (row in `sessions`)
# that delivered it", so every stored event can be traced to its socket.
UNTRACEABLE_SESSIONS = """
SELECT DISTINCT e.session_id::text FROM events e
WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.session_id = e.session_id)
"""


# -- the simulator's truth ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Truth:
    events: dict[Key, Json]  # every stored messaging change, by (dialog, sequence)
    conversations: dict[str, Json]  # conversation id -> current conversationDetails
    consumer_of: dict[str, str]  # conversation id -> its consumer
    effective_ttr: dict[str, int]  # conversation id -> effectiveTTR of its current state
    dialog_conversation: dict[str, str]  # dialog id -> conversation id


def truth(sim: Simulator, consumers: Iterable[str]) -> Truth:
    events: dict[Key, Json] = {}
    conversations: dict[str, Json] = {}
    consumer_of: dict[str, str] = {}
    effective_ttr: dict[str, int] = {}
    dialog_conversation: dict[str, str] = {}
    for consumer in consumers:
        for conversation_id in sim.conversation_ids(consumer):
            conversations[conversation_id] = sim.conversation(conversation_id)
            consumer_of[conversation_id] = consumer
            effective_ttr[conversation_id] = sim.world.conversation(conversation_id).effective_ttr
        for dialog_id in sim.dialog_ids(consumer):
            for change in sim.stored_events(dialog_id):
                events[(dialog_id, int(change["sequence"]))] = change
                dialog_conversation[dialog_id] = change["conversationId"]
            dialog_conversation.setdefault(dialog_id, sim.world.dialog(dialog_id).conversation_id)
    return Truth(events, conversations, consumer_of, effective_ttr, dialog_conversation)


def _version(details: Json) -> int:
    return int(details["metaDataLastUpdateTs"])


# -- the log --------------------------------------------------------------------------------------


async def _recorded_sequenced(db: asyncpg.Connection) -> dict[Key, int]:
    rows = await db.fetch(RECORDED_SEQUENCED)
    return {(row["dialog_id"], row["sequence"]): row["copies"] for row in rows}


async def _latest_details(db: asyncpg.Connection) -> dict[str, Json]:
    rows = await db.fetch(LATEST_UPSERTS)
    return {
        r["conversation_id"]: orjson.loads(r["payload"])["result"]["conversationDetails"]
        for r in rows
    }


async def is_recorded(sim: Simulator, consumers: Iterable[str], db: asyncpg.Connection) -> bool:
    """Every stored event and every conversation's current state is in the log."""
    expected = truth(sim, consumers)
    recorded = await _recorded_sequenced(db)
    if not expected.events.keys() <= recorded.keys():
        return False
    latest = await _latest_details(db)
    return all(
        conv in latest and _version(latest[conv]) >= _version(details)
        for conv, details in expected.conversations.items()
    )


async def wait_until_recorded(
    sim: Simulator, consumers: Iterable[str], db: asyncpg.Connection, *, within_s: float = 30.0
) -> float:
    """Poll the log until it holds the simulator's truth (faults must be off by now)."""
    consumers = list(consumers)

    async def recorded() -> bool:
        return await is_recorded(sim, consumers, db)

    try:
        return await poll(recorded, "the log never caught up with the simulator",
                          within_s=within_s, every_s=0.1)
    except AssertionError:
        await assert_recorded_everything(sim, consumers, db)  # say what is missing
        raise


async def assert_recorded_everything(
    sim: Simulator, consumers: Iterable[str], db: asyncpg.Connection
) -> int:
    """Zero missing, zero duplicated, nothing foreign, positions contiguous; returns the head."""
    expected = truth(sim, consumers)
    recorded = await _recorded_sequenced(db)

    missing = sorted(expected.events.keys() - recorded.keys())
    doubled = sorted((key, n) for key, n in recorded.items() if n > 1)
    foreign = sorted(recorded.keys() - expected.events.keys())
    assert not missing, f"{len(missing)} of {len(expected.events)} events missing: {missing[:5]}"
    assert not doubled, f"{len(doubled)} events recorded more than once: {doubled[:5]}"
    assert not foreign, f"{len(foreign)} sequenced events the simulator never stored: {foreign[:5]}"

    latest = await _latest_details(db)
    stale = {
        conv: (latest.get(conv, {}).get("metaDataLastUpdateTs"), details["metaDataLastUpdateTs"])
        for conv, details in expected.conversations.items()
        if latest.get(conv) != details
    }
    assert not stale, (
        f"{len(stale)} of {len(expected.conversations)} conversations lack their final state "
        f"(recorded version, final version): {list(stale.items())[:3]}"
    )
    twice = await db.fetch(CONVERSATION_CHANGES_TWICE)
    assert not twice, f"conversation changes recorded twice: {[tuple(r) for r in twice[:5]]}"

    conversations = {r[0] for r in await db.fetch(RECORDED_CONVERSATIONS)} - {None}
    unknown = conversations - expected.conversations.keys()
    assert not unknown, f"events of conversations the simulator does not have: {unknown}"
    dialogs = {r[0] for r in await db.fetch(RECORDED_DIALOGS)} - {None}
    unknown = dialogs - expected.dialog_conversation.keys()
    assert not unknown, f"events of dialogs the simulator does not have: {unknown}"

    untraceable = [row[0] for row in await db.fetch(UNTRACEABLE_SESSIONS)]
    assert not untraceable, f"events of sessions missing from `sessions`: {untraceable[:5]}"

    return await assert_log_contiguous(db)


# -- the projection -------------------------------------------------------------------------------


def _ts(ms: int | None) -> datetime.datetime | None:
    if ms is None or ms <= 0:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)


def _json(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


def expected_conversation(truth: Truth, conversation_id: str) -> Json:
    details = truth.conversations[conversation_id]
    csat = details.get("csat") or {}
    ttr = details["ttr"]
    return {
        "consumer_id": truth.consumer_of[conversation_id],
        "brand_id": details["brandId"],
        "skill_id": details["skillId"],
        "state": details["state"],
        "stage": details["stage"],
        "close_reason": details.get("closeReason"),
        "start_ts": _ts(details["startTs"]),
        "end_ts": _ts(details.get("endTs")),
        "meta_data_last_update_ts": details["metaDataLastUpdateTs"],
        "csat_rate": csat.get("csatRate"),
        "csat_resolution_confirmation": csat.get("csatResolutionConfirmation"),
        "csat_status": csat.get("status"),
        "ttr_type": ttr["ttrType"],
        "ttr_value": ttr["value"],
        "effective_ttr": _ts(truth.effective_ttr[conversation_id]),
        "deleted": False,
        "details": details,
    }


def expected_dialogs(details: Json) -> dict[str, Json]:
    return {
        dialog["dialogId"]: {
            "dialog_type": dialog["dialogType"],
            "channel_type": dialog["channelType"],
            "state": dialog["state"],
            "creation_ts": _ts(dialog["creationTs"]),
            "end_ts": _ts(dialog.get("endTs")),
            "closed_by": dialog.get("closedBy"),
            "closed_cause": dialog.get("closedCause"),
            "meta_data_last_update_ts": dialog["metaDataLastUpdateTs"],
            "participants": dialog["participantsDetails"],
        }
        for dialog in details["dialogs"]
    }


def expected_message(change: Json) -> Json:
    event = change["event"]
    message = event.get("message")
    hosted = event.get("contentType") == HOSTED_FILE
    return {
        "event_type": event["type"],
        "originator_id": change["originatorId"],
        "text": message if isinstance(message, str) else None,
        "file": message if hosted else None,
        "rich_content": event.get("content"),
    }


def expected_receipts(truth: Truth) -> set[tuple[str, int, str, str]]:
    return {
        (dialog_id, int(acknowledged), change["originatorId"], change["event"]["status"])
        for (dialog_id, _), change in truth.events.items()
        if change["event"]["type"] == RECEIPT
        for acknowledged in change["event"]["sequenceList"]
    }


async def assert_projection_caught_up(db: asyncpg.Connection) -> None:
    head = await db.fetchval("SELECT position FROM log_head WHERE id = 1")
    position = await db.fetchval(
        "SELECT position FROM projection_positions WHERE name = $1", PROJECTION_NAME
    )
    assert position == head, f"projection at {position}, log head at {head}"


async def assert_projection_matches(
    sim: Simulator, consumers: Iterable[str], db: asyncpg.Connection
) -> None:
    """The projection tables hold the simulator's final state, conversation by conversation."""
    expected = truth(sim, consumers)
    await assert_projection_caught_up(db)

    rows = {r["conversation_id"]: r for r in await db.fetch("SELECT * FROM conversations")}
    assert rows.keys() == expected.conversations.keys(), (
        f"conversations: missing {expected.conversations.keys() - rows.keys()}, "
        f"extra {rows.keys() - expected.conversations.keys()}"
    )
    wrong: list[tuple[str, str, Any, Any]] = []
    for conv, row in rows.items():
        for column, value in expected_conversation(expected, conv).items():
            found = _json(row[column]) if column == "details" else row[column]
            if found != value:
                wrong.append((conv, column, found, value))
    assert not wrong, f"{len(wrong)} conversation fields differ (conv, column, got, want): " \
        f"{wrong[:5]}"

    participants = {
        (r["conversation_id"], r["participant_id"], r["role"])
        for r in await db.fetch("SELECT * FROM participants")
    }
    want_participants = {
        (conv, person["id"], person["role"])
        for conv, details in expected.conversations.items()
        for person in details["participants"]
    }
    assert participants == want_participants, (
        f"participants: missing {sorted(want_participants - participants)[:5]}, "
        f"extra {sorted(participants - want_participants)[:5]}"
    )

    dialogs = {r["dialog_id"]: r for r in await db.fetch("SELECT * FROM dialogs")}
    want_dialogs = {
        dialog_id: (conv, fields)
        for conv, details in expected.conversations.items()
        for dialog_id, fields in expected_dialogs(details).items()
    }
    assert dialogs.keys() == want_dialogs.keys(), (
        f"dialogs: missing {want_dialogs.keys() - dialogs.keys()}, "
        f"extra {dialogs.keys() - want_dialogs.keys()}"
    )
    wrong = []
    for dialog_id, (conv, fields) in want_dialogs.items():
        row = dialogs[dialog_id]
        found_fields = {"conversation_id": row["conversation_id"]}
        found_fields |= {c: _json(row[c]) if c == "participants" else row[c] for c in fields}
        for column, value in ({"conversation_id": conv} | fields).items():
            if found_fields[column] != value:
                wrong.append((dialog_id, column, found_fields[column], value))
    assert not wrong, f"{len(wrong)} dialog fields differ (dialog, column, got, want): {wrong[:5]}"

    messages = {
        (r["dialog_id"], r["sequence"]): {
            "event_type": r["event_type"],
            "originator_id": r["originator_id"],
            "text": r["text"],
            "file": _json(r["file"]),
            "rich_content": _json(r["rich_content"]),
        }
        for r in await db.fetch("SELECT * FROM messages")
    }
    want_messages = {
        key: expected_message(change)
        for key, change in expected.events.items()
        if change["event"]["type"] != RECEIPT
    }
    per_dialog = collections.Counter(dialog for dialog, _ in messages)
    want_per_dialog = collections.Counter(dialog for dialog, _ in want_messages)
    counts = {
        dialog: (per_dialog[dialog], want_per_dialog[dialog])
        for dialog in per_dialog.keys() | want_per_dialog.keys()
        if per_dialog[dialog] != want_per_dialog[dialog]
    }
    assert not counts, f"messages per dialog differ (got, want): {list(counts.items())[:5]}"
    wrong_messages = [(key, messages[key], want) for key, want in want_messages.items()
                      if messages.get(key) != want]
    assert not wrong_messages, f"{len(wrong_messages)} messages differ: {wrong_messages[:3]}"

    receipts = {
        (r["dialog_id"], r["sequence"], r["participant_id"], r["status"])
        for r in await db.fetch("SELECT * FROM receipts")
    }
    want_receipts = expected_receipts(expected)
    assert receipts == want_receipts, (
        f"receipts: missing {sorted(want_receipts - receipts)[:5]}, "
        f"extra {sorted(receipts - want_receipts)[:5]}"
    )


async def assert_rebuild_equal(target: DatabaseTarget, head: int | None = None) -> None:
    """Replaying the whole log into fresh tables gives exactly the live projection (compared
    at `head`, when given).

    Run it after `assert_projection_matches`: a rebuild finding the live projection behind
    (and no projector running) folds the rest into the live tables itself.
    """
    report = await rebuild(target)
    if head is not None:
        assert report.position == head, f"rebuild compared at {report.position}, head {head}"
    assert report.equal, f"the rebuilt projection differs from the live one: {report.as_text()}"


# -- all of it ------------------------------------------------------------------------------------


async def assert_oracle(
    sim: Simulator, consumers: Iterable[str], target: DatabaseTarget, db: asyncpg.Connection
) -> int:
    """Every check, after the daemon stopped; returns the log head."""
    consumers = list(consumers)
    head = await assert_recorded_everything(sim, consumers, db)
    await assert_projection_matches(sim, consumers, db)
    await assert_rebuild_equal(target, head)
    return head
