"""recorder.history.compare: a conversation's log against LivePerson's history of it (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from recorder.history.compare import (
    KEYS_LISTED,
    Backfill,
    DialogSpan,
    LogMessage,
    compare,
    dialog_at,
    listed,
)

CONV = "conv-0001"
SURVEY = "survey-0001"
CONSUMER = "consumer-1"
AGENT = "agent-1"
T0 = 1_700_000_000_000
#: MAIN from T0 to T0 + 1000, then the survey, still open.
DIALOGS = [DialogSpan(CONV, "MAIN", T0, T0 + 1000), DialogSpan(SURVEY, "POST_SURVEY", T0 + 1000,
                                                               None)]


def text_event(text: str = "hi") -> dict[str, Any]:
    return {"type": "ContentEvent", "contentType": "text/plain", "message": text}


def read_event(sequences: list[int], status: str = "READ") -> dict[str, Any]:
    return {"type": "AcceptStatusEvent", "status": status, "sequenceList": sequences}


def record(sequence: int | None, event: dict[str, Any] | None = None, *,
           dialog: str | None = CONV, originator: str = CONSUMER,
           ts: int | None = None) -> dict[str, Any]:
    """A history record; fields left out where None (the reference leaves them open)."""
    found: dict[str, Any] = {"originatorId": originator, "event": event or text_event()}
    if sequence is not None:
        found["sequence"] = sequence
    if dialog is not None:
        found["dialogId"] = dialog
    if ts is not None:
        found["serverTimestamp"] = ts
    return found


def logged(sequence: int, event: dict[str, Any] | None = None, *, dialog: str = CONV,
           originator: str = CONSUMER, ts: int | None = None) -> LogMessage:
    body = event or text_event()
    return LogMessage(dialog, sequence, body.get("type"), originator,
                      T0 + sequence if ts is None else ts, body)


def test_records_with_dialog_and_sequence_match_or_are_backfilled_into_that_dialog() -> None:
    log = [logged(1), logged(2), logged(1, dialog=SURVEY)]
    missing_main, missing_survey = record(3), record(2, dialog=SURVEY)
    # (SURVEY, 2) is missing although (CONV, 2) is logged: dialogs are not mixed up.
    history = [record(1), record(2), missing_main, record(1, dialog=SURVEY), missing_survey]
    found = compare(CONV, log, DIALOGS, history)
    assert found.history_records == 5
    assert found.matched == 3
    assert found.backfill == [Backfill(CONV, 3, missing_main), Backfill(SURVEY, 2, missing_survey)]
    assert found.backfill[0].record is missing_main  # the record as received, not a copy
    assert found.only_in_log == [] and found.content_differs == []


def test_record_without_dialog_is_matched_by_its_sequence_in_any_dialog() -> None:
    log = [logged(5, dialog=SURVEY)]
    found = compare(CONV, log, DIALOGS, [record(5, dialog=None, ts=T0 + 5)])
    assert (found.matched, found.backfill, found.only_in_log) == (1, [], [])


def test_record_without_dialog_prefers_a_logged_event_of_its_own_type() -> None:
    log = [logged(4, read_event([1]), originator=AGENT), logged(4, dialog=SURVEY)]
    found = compare(CONV, log, DIALOGS, [record(4, dialog=None)])
    assert found.matched == 1 and found.backfill == []
    # The ContentEvent in the survey was the match: the MAIN receipt is what only the log has.
    assert found.only_in_log == [(CONV, 4)]


@pytest.mark.parametrize(("ts", "expected"), [
    (T0 + 10, CONV),  # MAIN was open
    (T0 + 1500, SURVEY),  # the survey was open
    (T0 + 1000, SURVEY),  # both at that instant: the latest created
    (T0 - 5, CONV),  # before any dialog: MAIN
    (None, CONV),  # no time: MAIN
])
def test_missing_record_without_dialog_is_backfilled_into_the_dialog_open_at_its_time(
    ts: int | None, expected: str
) -> None:
    missing = record(9, dialog=None, ts=ts)
    found = compare(CONV, [logged(1)], DIALOGS, [missing])
    assert found.backfill == [Backfill(expected, 9, missing)]
    assert found.matched == 0


def test_missing_record_without_dialog_when_no_dialog_is_known_goes_to_the_conversation() -> None:
    missing = record(2, dialog=None, ts=T0)
    assert compare(CONV, [], [], [missing]).backfill == [Backfill(CONV, 2, missing)]


def test_dialog_at_edge_cases() -> None:
    # After MAIN ended and with nothing open: MAIN all the same.
    spans = [DialogSpan(CONV, "MAIN", T0, T0 + 1000)]
    assert dialog_at(spans, T0 + 5000, "x") == CONV
    # Dialogs only the cursors know (no type, no times): the first listed.
    unknown = [DialogSpan("d-b", None, None, None), DialogSpan("d-a", None, None, None)]
    assert dialog_at(unknown, T0, "x") == "d-b"
    # Given in any order: the latest created before the time.
    assert dialog_at(list(reversed(DIALOGS)), T0 + 1200, "x") == SURVEY
    assert dialog_at([], None, "the-conversation") == "the-conversation"


def test_receipt_without_sequence_is_matched_by_originator_status_and_sequences() -> None:
    log = [logged(1), logged(2), logged(3), logged(7, read_event([3, 1, 2]), originator=AGENT)]
    # The same receipt, its sequences in another order and its author only in the metadata.
    same = {"originatorMetadata": {"id": AGENT, "role": "ASSIGNED_AGENT"},
            "event": read_event([1, 2, 3]), "dialogId": CONV, "serverTimestamp": T0 + 999}
    found = compare(CONV, log, DIALOGS, [record(1), record(2), record(3), same])
    assert found.matched == 4 and found.backfill == []
    assert found.only_in_log == []  # (CONV, 7) was witnessed by the content match


@pytest.mark.parametrize("other", [
    record(None, read_event([1, 2, 3], "ACCEPT"), originator=AGENT),  # another status
    record(None, read_event([1, 2]), originator=AGENT),  # other sequences
    record(None, read_event([1, 2, 3]), originator=CONSUMER),  # another author
])
def test_receipt_without_sequence_not_in_the_log_is_backfilled_without_sequence(
    other: dict[str, Any]
) -> None:
    log = [logged(7, read_event([3, 1, 2]), originator=AGENT)]
    found = compare(CONV, log, DIALOGS, [other])
    assert found.matched == 0
    assert found.backfill == [Backfill(CONV, None, other)]
    assert found.only_in_log == [(CONV, 7)]


def test_receipt_without_sequence_or_dialog_is_backfilled_into_the_dialog_at_its_time() -> None:
    missing = record(None, read_event([1]), dialog=None, originator=AGENT, ts=T0 + 1500)
    found = compare(CONV, [], DIALOGS, [missing])
    assert found.backfill == [Backfill(SURVEY, None, missing)]


def test_only_in_log_lists_the_history_types_the_history_lacks() -> None:
    log = [
        logged(6, read_event([1]), dialog=SURVEY, originator=AGENT),
        logged(1),
        logged(2, {"type": "RichContentEvent", "content": {"type": "vertical"}}),
        logged(3, read_event([1]), originator=AGENT),
        logged(4, {"type": "FutureEvent", "payload": 1}),  # never in the history
        logged(5, {"type": "ChatStateEvent", "chatState": "COMPOSING"}),
        LogMessage(CONV, 8, None, CONSUMER, None, None),  # no type at all
        logged(9),  # the one the history has
    ]
    found = compare(CONV, log, DIALOGS, [record(9)])
    assert found.only_in_log == [(CONV, 1), (CONV, 2), (CONV, 3), (SURVEY, 6)]
    assert found.matched == 1 and found.backfill == []


def test_content_differs_when_the_history_text_is_not_the_logged_text() -> None:
    log = [logged(1, text_event("my card is 1234")), logged(2, text_event("same")),
           logged(3, {"type": "ContentEvent", "contentType": "hosted/file",
                      "message": {"relativePath": "a/b.png"}})]
    history = [record(1, text_event("** LP deleted data **")), record(2, text_event("same")),
               record(3, {"type": "ContentEvent", "contentType": "hosted/file",
                          "message": {"relativePath": "other.png"}})]
    found = compare(CONV, log, DIALOGS, history)
    assert found.content_differs == [(CONV, 1)]  # texts only: a file is not compared
    assert found.matched == 3 and found.backfill == [] and found.only_in_log == []


def test_a_duplicated_history_record_of_a_logged_event_counts_as_matched_twice() -> None:
    twice = record(1)
    found = compare(CONV, [logged(1)], DIALOGS, [twice, dict(twice)])
    assert (found.history_records, found.matched, found.backfill) == (2, 2, [])


@pytest.mark.parametrize("second", [
    record(3),  # the same record again
    record(3, text_event("** LP deleted data **")),  # the same key, served differently
], ids=["identical", "same-key"])
def test_backfill_never_holds_the_same_dialog_and_sequence_twice(
    second: dict[str, Any]
) -> None:
    found = compare(CONV, [logged(1)], DIALOGS, [record(3), second])
    keys = [(b.dialog_id, b.sequence) for b in found.backfill]
    assert keys == [(CONV, 3)]


def test_listed_keeps_at_most_keys_listed_as_lists() -> None:
    keys: list[tuple[str, int | None]] = [(CONV, n) for n in range(KEYS_LISTED + 5)]
    shown = listed(keys)
    assert len(shown) == KEYS_LISTED and shown[0] == [CONV, 0] and shown[-1] == [CONV, 99]
    assert listed([(SURVEY, None)]) == [[SURVEY, None]]
