"""The fold of `agent` and `reconciliation` events (recorder.projection.history_rows through
Batch), fed the events recorder.history makes, and receipts backfilled without a sequence."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from recorder.eventlog.records import EventRecord
from recorder.history.compare import Backfill, Comparison
from recorder.history.profiles import profile_record
from recorder.history.reconciler import Reconciler
from recorder.projection.history_rows import DETAIL_KEYS
from recorder.projection.rows import Batch, LogRow
from tests.projection_helpers import ACCOUNT, AGENT1, AGENT2, CONSUMER, CONV, content, receipt

PROFILE = {"id": AGENT1, "nickname": "Ana", "fullName": "Ana Almeida",
           "pictureUrl": "https://cdn.example.invalid/a.png", "employeeId": "E100001"}
CHECKED_S = 1_700_000_100.0


def row(position: int, item: EventRecord) -> LogRow:
    """An event as the fold reads it back from the log."""
    return LogRow(position, item.kind, item.account_id, item.consumer_id, item.conversation_id,
                  item.dialog_id, item.payload)


def raw(position: int, kind: str, payload: Any, conversation_id: str | None = None,
        dialog_id: str | None = None) -> LogRow:
    text = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    return LogRow(position, kind, ACCOUNT, CONSUMER, conversation_id, dialog_id, text)


def agent(position: int, profile: dict[str, Any] | None, fetched_at: float = 1_700_000_000.0,
          agent_id: str = AGENT1) -> LogRow:
    status = 200 if profile is not None else 404
    return row(position, profile_record(agent_id, status, profile, account_id=ACCOUNT,
                                        consumer_id=CONSUMER, conversation_id=CONV,
                                        fetched_at=fetched_at))


def reconciler() -> Reconciler:
    async def put(_: EventRecord) -> None:
        raise AssertionError("not used")

    return Reconciler(None, put, None, None, ACCOUNT,  # type: ignore[arg-type]
                      after_s=0.0, retry_s=1.0)


def checked(position: int, found: Comparison, *, state: str | None = "CLOSE",
            partial: bool = False, requests: int = 1, now: float = CHECKED_S) -> LogRow:
    return row(position, reconciler()._reconciliation_record(
        found, CONV, CONSUMER, state, partial, requests, now))


def batch_of(rows: list[LogRow]) -> Batch:
    batch = Batch()
    for item in rows:
        batch.add(item)
    return batch


# -- agents --------------------------------------------------------------------------------------


def test_a_profile_projects_its_columns() -> None:
    batch = batch_of([agent(4, PROFILE, 1_700_000_000.5), agent(5, None, agent_id=AGENT2)])
    assert batch.agents[AGENT1] == (
        AGENT1, True, "Ana", "Ana Almeida", "https://cdn.example.invalid/a.png", "E100001",
        orjson.dumps(PROFILE).decode(), 1_700_000_000_500, 4)
    assert batch.agents[AGENT2] == (AGENT2, False, None, None, None, None, None,
                                    1_700_000_000_000, 5)
    assert batch.unreadable == [] and batch.events == 2
    assert batch.conversations == {} and batch.messages == {}  # an agent is no conversation


def test_the_newest_agent_event_wins_in_any_order() -> None:
    events = [agent(3, PROFILE), agent(9, {**PROFILE, "nickname": "Anita"}), agent(6, None)]
    for order in itertools.permutations(events):
        found = batch_of(list(order)).agents[AGENT1]
        assert (found[2], found[-1]) == ("Anita", 9), order


@pytest.mark.parametrize("payload", [
    "not json", "1e400", "[1, 2]", "null", {},
    {"found": True, "profile": PROFILE, "fetchedAt": 1_700_000_000_000},  # no agent
    {"agentId": "", "found": False, "fetchedAt": 1_700_000_000_000},
    {"agentId": AGENT1, "found": True, "profile": PROFILE},  # no time
    {"agentId": AGENT1, "found": False, "fetchedAt": 0},
    {"agentId": AGENT1, "found": False, "fetchedAt": True},
    {"agentId": AGENT1, "found": False, "fetchedAt": "1700000000000"},
    {"agentId": AGENT1, "found": False, "fetchedAt": 10**16},
    {"agentId": [AGENT1], "found": False, "fetchedAt": 1_700_000_000_000},
], ids=repr)
def test_a_malformed_agent_event_projects_nothing_and_is_unreadable(payload: Any) -> None:
    batch = batch_of([agent(2, PROFILE), raw(8, "agent", payload)])
    assert batch.unreadable == [8]
    assert batch.agents[AGENT1][-1] == 2  # the later, unreadable event replaced nothing


def test_an_agent_profile_of_odd_shape_is_read_defensively() -> None:
    odd = {"agentId": 1234, "found": True, "fetchedAt": 1_700_000_000_000,
           "profile": {"nickname": 7, "fullName": ["x"], "pictureUrl": None}}
    unknown = {"agentId": "a-9", "found": True, "profile": "text", "fetchedAt": 1_700_000_000_000}
    batch = batch_of([raw(1, "agent", odd), raw(2, "agent", unknown)])
    assert batch.agents["1234"][:6] == ("1234", True, "7", None, None, None)
    assert batch.agents["a-9"][1:7] == (False, None, None, None, None, None)
    assert batch.unreadable == []


# -- reconciliations -----------------------------------------------------------------------------


def comparison(**counts: Any) -> Comparison:
    found = Comparison(history_records=12, matched=9)
    found.backfill = [Backfill(CONV, n, {}) for n in (4, 5)] + [Backfill(CONV, None, {})]
    found.only_in_log = [(CONV, 20)]
    found.content_differs = [(CONV, 3), (CONV, 7)]
    for name, value in counts.items():
        setattr(found, name, value)
    return found


def test_a_reconciliation_projects_its_counts_and_keys() -> None:
    batch = batch_of([checked(11, comparison(), partial=True, requests=4)])
    (conversation_id, consumer_id, checked_ms, state, history_records, matched, backfilled,
     only_in_log, differs, partial, requests, unreported, details,
     position) = batch.reconciliations[CONV]
    assert (conversation_id, consumer_id, checked_ms, state) == (
        CONV, CONSUMER, 1_700_000_100_000, "CLOSE")
    assert (history_records, matched, backfilled, only_in_log, differs) == (12, 9, 3, 1, 2)
    assert (partial, requests, unreported, position) == (True, 4, False, 11)
    assert orjson.loads(details) == {
        "onlyInLogKeys": [[CONV, 20]], "contentDiffersKeys": [[CONV, 3], [CONV, 7]],
        "backfilledKeys": [[CONV, 4], [CONV, 5], [CONV, None]]}
    assert batch.unreadable == [] and CONV not in batch.conversations


def test_the_newest_reconciliation_wins_in_any_order() -> None:
    events = [checked(5, comparison(), state="OPEN"),
              checked(30, comparison(matched=12), state="CLOSE"),
              checked(17, comparison(), partial=True)]
    for order in itertools.permutations(events):
        found = batch_of(list(order)).reconciliations[CONV]
        assert (found[3], found[5], found[-1]) == ("CLOSE", 12, 30), order


def test_a_reconciliation_keeps_a_bounded_list_of_keys() -> None:
    many = [(CONV, n) for n in range(DETAIL_KEYS + 50)]
    payload = orjson.loads(checked(1, comparison()).payload)
    payload["onlyInLogKeys"] = [list(k) for k in many]  # an event listing more than it should
    payload["onlyInLog"] = len(many)
    found = batch_of([raw(2, "reconciliation", payload, CONV)]).reconciliations[CONV]
    assert found[7] == len(many)
    assert len(orjson.loads(found[12])["onlyInLogKeys"]) == DETAIL_KEYS


def test_a_reconciliation_without_a_conversation_column_reads_its_payload() -> None:
    payload = orjson.loads(checked(1, comparison()).payload)
    found = batch_of([raw(3, "reconciliation", payload, None)])
    assert found.reconciliations[CONV][0] == CONV
    # The column wins where both are given.
    other = batch_of([raw(3, "reconciliation", payload, "from-the-column")])
    assert set(other.reconciliations) == {"from-the-column"}


def test_odd_counts_read_as_zero_and_partial_only_when_true() -> None:
    payload = {"conversationId": CONV, "checkedAt": 1_700_000_000_000, "matched": -1,
               "historyRecords": "12", "backfilled": 2**40, "onlyInLog": 1.5,
               "contentDiffers": None, "historyPartial": "yes", "requests": True,
               "onlyInLogKeys": "not a list"}
    found = batch_of([raw(1, "reconciliation", payload, CONV)]).reconciliations[CONV]
    assert found[4:11] == (0, 0, 0, 0, 0, False, 0)
    assert orjson.loads(found[12]) == {}


@pytest.mark.parametrize("payload", [
    "{", "1e400", '"text"', "[]",
    {"conversationId": CONV},  # no time
    {"conversationId": CONV, "checkedAt": -5},
    {"checkedAt": 1_700_000_000_000},  # no conversation, in the payload or the column
], ids=repr)
def test_a_malformed_reconciliation_projects_nothing_and_is_unreadable(payload: Any) -> None:
    conversation_id = CONV if isinstance(payload, str) or "conversationId" in payload else None
    batch = batch_of([checked(2, comparison()),
                      raw(7, "reconciliation", payload, conversation_id)])
    assert batch.unreadable == [7]
    assert batch.reconciliations[CONV][-1] == 2


# -- messaging events from the history -----------------------------------------------------------


def backfilled(position: int, item: Backfill) -> LogRow:
    return row(position, reconciler()._backfill_record(item, CONV, CONSUMER, CHECKED_S))


def history_record(change: dict[str, Any], *drop: str) -> dict[str, Any]:
    return {k: v for k, v in change.items() if k not in drop}


def test_a_receipt_without_sequence_projects_its_receipts() -> None:
    live = receipt(CONV, 9, [3, 5], "READ")
    record = history_record(live, "sequence")
    batch = batch_of([backfilled(14, Backfill(CONV, None, record))])
    stamp = live["serverTimestamp"]
    assert batch.receipts == {
        (CONV, 3, AGENT1, "READ"): (CONV, 3, AGENT1, "READ", stamp, 14),
        (CONV, 5, AGENT1, "READ"): (CONV, 5, AGENT1, "READ", stamp, 14),
    }
    assert batch.messages == {}  # a receipt is no message, with or without a sequence
    assert set(batch.conversations) == {CONV} and batch.unreadable == []


def test_a_receipt_without_sequence_or_dialog_projects_nothing() -> None:
    record = history_record(receipt(CONV, 9, [3]), "sequence", "dialogId")
    batch = batch_of([raw(2, "messaging", record, CONV, None)])
    assert (batch.receipts, batch.messages, batch.conversations) == ({}, {}, {})


def test_a_receipt_backfilled_and_logged_live_projects_once_with_the_first_position() -> None:
    live = receipt(CONV, 9, [3])
    record = history_record(live, "sequence")
    for order in ([raw(4, "messaging", live, CONV, CONV),
                   backfilled(20, Backfill(CONV, None, record))],
                  [backfilled(20, Backfill(CONV, None, record)),
                   raw(4, "messaging", live, CONV, CONV)]):
        assert batch_of(order).receipts == {
            (CONV, 3, AGENT1, "READ"): (CONV, 3, AGENT1, "READ", live["serverTimestamp"], 4)}


def test_a_chat_state_without_sequence_still_projects_nothing() -> None:
    typing = {"originatorId": CONSUMER, "serverTimestamp": 1_700_000_000_000,
              "event": {"type": "ChatStateEvent", "chatState": "COMPOSING"},
              "conversationId": CONV, "dialogId": CONV}
    batch = batch_of([raw(1, "messaging", typing, CONV, CONV)])
    assert (batch.receipts, batch.messages, batch.conversations) == ({}, {}, {})


def test_a_backfilled_message_projects_as_its_live_copy_would() -> None:
    live = content(CONV, 6, "only the history had this")
    from_history = batch_of([backfilled(31, Backfill(CONV, 6, dict(live)))]).messages
    from_socket = batch_of([raw(31, "messaging", live, CONV, CONV)]).messages
    assert from_history == from_socket and (CONV, 6) in from_history
