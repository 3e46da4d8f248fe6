"""design.md section 3: any reordering or duplication of a conversation's events yields the
same projection as applying each of them once, in timestamp and sequence order."""

from __future__ import annotations

import itertools
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorder.projection.fold import apply_events
from recorder.projection.rows import LogRow
from tests.projection_helpers import (
    AGENT1,
    AGENT2,
    BOT,
    CONSUMER,
    content,
    delete,
    log_rows,
    receipt,
    snapshot,
    upsert,
)

CONV = "conv-p"
SURVEY = "survey-p"
PEOPLE = [AGENT1, AGENT2, BOT]
TABLES = "conversations, dialogs, participants, messages, receipts"

timestamps = st.integers(min_value=1_000, max_value=1_060)


@st.composite
def conversation_upsert(draw: st.DrawFn, ts: int) -> dict[str, Any]:
    change = upsert(
        CONV, ts,
        skill=draw(st.sampled_from(["s1", "s2", "s3", None])),
        agents=draw(st.lists(st.sampled_from(PEOPLE), max_size=2, unique=True)),
        readers=draw(st.lists(st.sampled_from(PEOPLE), max_size=1)),
        state=draw(st.sampled_from(["OPEN", "CLOSE"])),
        stage=draw(st.sampled_from(["OPEN", "CLOSE"])),
        dialog_state=draw(st.sampled_from(["OPEN", "CLOSE"])),
    )
    if draw(st.booleans()):  # a survey dialog, as after the MAIN dialog closes
        details = change["result"]["conversationDetails"]
        details["dialogs"].append({"dialogId": SURVEY, "dialogType": "POST_SURVEY",
                                   "state": "OPEN", "creationTs": ts})
        details["csat"] = {"csatRate": draw(st.integers(1, 5)), "status": "FILLED"}
    return change


@st.composite
def messaging_event(draw: st.DrawFn, sequence: int, sequences: list[int]) -> dict[str, Any]:
    dialog = draw(st.sampled_from([CONV, SURVEY]))
    kind = draw(st.sampled_from(["text", "rich", "file", "future", "receipt", "receipt"]))
    if kind == "receipt":
        return receipt(CONV, sequence, draw(st.lists(st.sampled_from(sequences), min_size=1,
                                                     max_size=3)),
                       draw(st.sampled_from(["READ", "ACCEPT"])),
                       originator=draw(st.sampled_from([CONSUMER, AGENT1])))
    change = content(CONV, sequence, f"text {sequence}", dialog=dialog)
    if kind == "rich":
        change["event"] = {"type": "RichContentEvent", "content": {"type": "vertical"}}
    elif kind == "file":
        change["event"] = {"type": "ContentEvent", "contentType": "hosted/file",
                           "message": {"caption": "c", "relativePath": "/p", "fileType": "PNG"}}
    elif kind == "future":
        change["event"] = {"type": "FutureEvent", "n": sequence}
    return change


@st.composite
def conversation_log(draw: st.DrawFn) -> list[LogRow]:
    """One conversation's distinct events, in timestamp/sequence order, each at a position."""
    upserts = sorted(draw(st.sets(timestamps, min_size=1, max_size=6)))
    deletes = sorted(draw(st.sets(timestamps, max_size=2)))
    sequences = sorted(draw(st.sets(st.integers(0, 30), max_size=10)))
    changes: list[tuple[int, dict[str, Any]]] = [
        (ts, draw(conversation_upsert(ts))) for ts in upserts]
    changes += [(ts, delete(CONV, ts)) for ts in deletes]
    if draw(st.integers(0, 9)) == 0:
        changes.append((2_000, delete(CONV, None)))  # final, whatever comes after
    changes.sort(key=lambda pair: (pair[0], pair[1]["type"]))
    ordered = [change for _, change in changes]
    ordered += [draw(messaging_event(s, sequences)) for s in sequences]
    ordered.append({"originatorId": CONSUMER, "conversationId": CONV, "dialogId": CONV,
                    "event": {"type": "ChatStateEvent", "chatState": "COMPOSING"}})
    return log_rows(ordered)


async def projection_of(db: asyncpg.Connection, batches: list[list[LogRow]],
                        ) -> dict[str, list[tuple[Any, ...]]]:
    await db.execute(f"TRUNCATE {TABLES}")
    for batch in batches:
        await apply_events(db, batch)
    return await snapshot(db)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(events=conversation_log(), data=st.data())
async def test_any_order_and_any_repeats_give_the_same_projection(
        db: asyncpg.Connection, events: list[LogRow], data: st.DataObject) -> None:
    expected = await projection_of(db, [[event] for event in events])

    repeats = data.draw(st.lists(st.sampled_from(events), max_size=len(events)), label="repeats")
    shuffled = data.draw(st.permutations(events + repeats), label="order")
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(shuffled) - 1)), max_size=6),
                            label="cuts"))
    bounds = [0, *cuts, len(shuffled)]
    batches = [shuffled[a:b] for a, b in itertools.pairwise(bounds) if a < b]

    assert await projection_of(db, batches) == expected
