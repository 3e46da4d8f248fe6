"""Payload accessors: the normalisers give the right values per example and tolerate every
variant in protocol.md (participant and dialog shapes, originators, rich content, sequences);
they never raise on odd input; the one-pass readers agree with them; the scalar readers
(id_text, as_int, text_or_empty) take ids and numbers in the forms the wire sends them. The cast
and the example helpers are shared with test_frames.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorder.ums import payload
from recorder.ums.frames import (
    Notification,
    is_conversation_notification,
    is_messaging_notification,
    parse_frame,
)
from recorder.ums.payload import (
    DialogInfo,
    Participant,
    as_int,
    as_list,
    change_conversation_id,
    change_dialog_id,
    change_sequence,
    content_type,
    event_type,
    id_text,
    originator_id,
    originator_role,
    rich_content,
    server_timestamp_ms,
    text_or_empty,
)
from tests.protocol_files import example_text as text
from tests.ums.test_frames import (
    AGENT1,
    AGENT2,
    BOT,
    CONSUMER,
    CONTROLLER,
    CONV,
    EXAMPLE_NAMES,
    OLD_CONV,
    SUBSCRIPTION,
    SURVEY,
    notification,
    variant,
)


def details(change: dict[str, Any]) -> Any:
    return change["result"]["conversationDetails"]


# --- every notification example --------------------------------------------------------------


# Per conversation change: (type, conversation id, metadata timestamp, participants, dialogs).
EXCONV: dict[str, list[tuple[str, str, int, list[tuple[str, str]], list[tuple[str, str, str]]]]] = {
    "notif_exconv_initial_empty.json": [],
    "notif_exconv_upsert_open.json": [
        ("UPSERT", CONV, 1732530000000, [(CONSUMER, "CONSUMER")], [(CONV, "MAIN", "OPEN")]),
    ],
    "notif_exconv_upsert_agent_joined.json": [
        ("UPSERT", CONV, 1732530041250,
         [(CONSUMER, "CONSUMER"), (AGENT1, "ASSIGNED_AGENT")], [(CONV, "MAIN", "OPEN")]),
    ],
    "notif_exconv_upsert_transfer_to_skill.json": [
        ("UPSERT", CONV, 1732530215000,
         [(CONSUMER, "CONSUMER"), (AGENT1, "READER")], [(CONV, "MAIN", "OPEN")]),
    ],
    "notif_exconv_upsert_transfer_suggested_agent.json": [
        ("UPSERT", CONV, 1732530230000,
         [(CONSUMER, "CONSUMER"), (AGENT1, "READER"), (AGENT2, "ASSIGNED_AGENT")],
         [(CONV, "MAIN", "OPEN")]),
    ],
    "notif_exconv_upsert_closed_with_csat.json": [
        ("UPSERT", CONV, 1732531308000,
         [(CONSUMER, "CONSUMER"), (AGENT1, "READER"), (AGENT2, "ASSIGNED_AGENT")],
         [(CONV, "MAIN", "CLOSE")]),
    ],
    "notif_exconv_upsert_main_closed_post_survey_open.json": [
        ("UPSERT", CONV, 1732531500350,
         [(AGENT1, "ASSIGNED_AGENT"), (AGENT1, "READER"), (CONSUMER, "CONSUMER"),
          (BOT, "AGENT"), (CONTROLLER, "CONTROLLER")],
         [(CONV, "MAIN", "CLOSE"), (SURVEY, "POST_SURVEY", "OPEN")]),
    ],
    "notif_exconv_upsert_survey_completed_stage_close.json": [
        ("UPSERT", CONV, 1732531595000,
         [(AGENT1, "ASSIGNED_AGENT"), (CONSUMER, "CONSUMER"), (CONTROLLER, "CONTROLLER"),
          (AGENT1, "READER"), (BOT, "AGENT")],
         [(CONV, "MAIN", "CLOSE"), (SURVEY, "POST_SURVEY", "CLOSE")]),
    ],
    "notif_exconv_delete.json": [
        ("DELETE", OLD_CONV, 1732357200000, [(CONSUMER, "CONSUMER"), (AGENT2, "ASSIGNED_AGENT")],
         []),
    ],
    "notif_exconv_multi_change_batch.json": [
        ("UPSERT", OLD_CONV, 1732357200000,
         [(CONSUMER, "CONSUMER"), (AGENT2, "ASSIGNED_AGENT")], [(OLD_CONV, "MAIN", "CLOSE")]),
        ("UPSERT", CONV, 1732530000000, [(CONSUMER, "CONSUMER")], [(CONV, "MAIN", "OPEN")]),
    ],
    # participantsPId map, no dialogs, and the timestamp from the older result.lastUpdateTime.
    "notif_exconv_upsert_legacy_participants_map.json": [
        ("UPSERT", CONV, 1732530041250, [(CONSUMER, "CONSUMER"), (AGENT1, "ASSIGNED_AGENT")], []),
    ],
}  # fmt: skip

# Per messaging change: (dialog, sequence, originator, role, event type, server timestamp).
MESSAGING: dict[str, list[tuple[str, int | None, str, str, str, int | None]]] = {
    "notif_msg_backfill_batch.json": [
        (CONV, 0, CONSUMER, "CONSUMER", "ContentEvent", 1732530000015),
        (CONV, 1, AGENT1, "ASSIGNED_AGENT", "AcceptStatusEvent", 1732530041900),
        (CONV, 2, AGENT1, "ASSIGNED_AGENT", "ContentEvent", 1732530063020),
        (CONV, 3, CONSUMER, "CONSUMER", "AcceptStatusEvent", 1732530063400),
    ],
    "notif_msg_content_text_from_agent.json": [
        (CONV, 4, AGENT1, "ASSIGNED_AGENT", "ContentEvent", 1732530120455),
    ],
    "notif_msg_content_text_from_consumer_echo.json": [
        (CONV, 5, CONSUMER, "CONSUMER", "ContentEvent", 1732530151230),
    ],
    "notif_msg_rich_content_from_agent.json": [
        (CONV, 6, AGENT1, "ASSIGNED_AGENT", "RichContentEvent", 1732530180770),
    ],
    "notif_msg_accept_status_accept_from_consumer.json": [
        (CONV, 7, CONSUMER, "CONSUMER", "AcceptStatusEvent", 1732530181010),
    ],
    "notif_msg_accept_status_read_from_agent.json": [
        (CONV, 8, AGENT1, "ASSIGNED_AGENT", "AcceptStatusEvent", 1732530182300),
    ],
    "notif_msg_hosted_file_from_consumer.json": [
        (CONV, 9, CONSUMER, "CONSUMER", "ContentEvent", 1732530240118),
    ],
    "notif_msg_private_agent_message_audience.json": [
        (CONV, 10, AGENT1, "ASSIGNED_AGENT", "ContentEvent", 1732530250000),
    ],
    "notif_msg_resume_after_reconnect.json": [  # 9 again (dedupe), then the gap at 10
        (CONV, 9, CONSUMER, "CONSUMER", "ContentEvent", 1732530240118),
        (CONV, 11, AGENT1, "ASSIGNED_AGENT", "ContentEvent", 1732530301777),
        (CONV, 12, AGENT1, "ASSIGNED_AGENT", "AcceptStatusEvent", 1732530301790),
    ],
    "notif_msg_chat_state_composing_agent.json": [
        (CONV, None, AGENT1, "ASSIGNED_AGENT", "ChatStateEvent", None),
    ],
    "notif_msg_chat_state_active_consumer.json": [
        (CONV, None, CONSUMER, "CONSUMER", "ChatStateEvent", None),
    ],
    "notif_msg_post_survey_question.json": [
        (SURVEY, 0, BOT, "AGENT", "ContentEvent", 1732531500900),
        (SURVEY, 1, BOT, "AGENT", "ContentEvent", 1732531502800),
    ],
    "notif_msg_post_survey_action_echo.json": [
        (SURVEY, 2, CONSUMER, "CONSUMER", "AcceptStatusEvent", 1732531515600),
    ],
}


def test_tables_cover_every_notification_example() -> None:
    assert sorted(n for n in EXAMPLE_NAMES if n.startswith("notif_exconv_")) == sorted(EXCONV)
    assert sorted(n for n in EXAMPLE_NAMES if n.startswith("notif_msg_")) == sorted(MESSAGING)


@pytest.mark.parametrize("name", sorted(EXCONV))
def test_conversation_examples_normalise(name: str) -> None:
    frame = notification(text(name))
    assert frame.name == "ExConversationChangeNotification"
    assert is_conversation_notification(frame) and not is_messaging_notification(frame)
    assert frame.subscription_id == SUBSCRIPTION
    got = [
        (change["type"], change_conversation_id(change), server_timestamp_ms(change),
         [(p.id, p.role) for p in payload.participants(details(change))],
         [(d.dialog_id, d.dialog_type, d.state) for d in payload.dialogs(details(change))])
        for change in frame.changes
    ]  # fmt: skip
    assert got == EXCONV[name]
    assert all(change_dialog_id(c) is None and change_sequence(c) is None for c in frame.changes)


@pytest.mark.parametrize("name", sorted(MESSAGING))
def test_messaging_examples_normalise(name: str) -> None:
    frame = notification(text(name))
    assert frame.name == "MessagingEventNotification"
    assert is_messaging_notification(frame) and not is_conversation_notification(frame)
    assert frame.subscription_id is None
    got = [
        (change_dialog_id(c), change_sequence(c), originator_id(c), originator_role(c),
         event_type(c), server_timestamp_ms(c))
        for c in frame.changes
    ]  # fmt: skip
    assert got == MESSAGING[name]
    assert all(change_conversation_id(c) == CONV for c in frame.changes)


def test_post_survey_dialog_is_found_with_its_participants() -> None:
    frame = notification(text("notif_exconv_upsert_main_closed_post_survey_open.json"))
    main, survey = payload.dialogs(details(frame.changes[0]))
    assert survey == DialogInfo(
        SURVEY, "POST_SURVEY", "OPEN", "MESSAGING", 1732531500350,
        (Participant(CONSUMER, "CONSUMER", "ACTIVE"), Participant(BOT, "AGENT", "ACTIVE"),
         Participant(AGENT1, "READER", "ACTIVE")),
        {},  # `data` is not compared
    )  # fmt: skip
    assert survey.data["metaData"] == {"appInstallId": "0f3b5d7e-9a1c-4e2b-8d6f-3a5c7e9b1d24"}
    assert (main.dialog_id, main.state, main.data["closedCause"]) == (
        CONV, "CLOSE", "Closed by consumer",
    )  # fmt: skip


def test_suggested_transfer_target_keeps_its_dialog_state() -> None:
    frame = notification(text("notif_exconv_upsert_transfer_suggested_agent.json"))
    (dialog,) = payload.dialogs(details(frame.changes[0]))
    assert Participant(AGENT2, "ASSIGNED_AGENT", "SUGGESTED") in dialog.participants_details


def test_rich_content_from_agent() -> None:
    frame = notification(text("notif_msg_rich_content_from_agent.json"))
    event = frame.changes[0]["event"]
    content = rich_content(event)
    assert content is not None and content["type"] == "vertical"
    assert [e["type"] for e in content["elements"]] == ["text", "text", "button"]
    assert content["elements"][2]["click"]["actions"][0]["uri"].endswith("/refunds/R-77120")
    assert content_type(event) is None
    assert frame.changes[0]["metadata"] == [{"type": "ExternalId", "id": "refund-card-R-77120"}]


@pytest.mark.parametrize("spelling", ["hosted/file", "HostedFile"])
def test_hosted_file_content_type_is_normalised_and_raw_kept(spelling: str) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["body"]["changes"][0]["event"]["contentType"] = spelling

    frame = notification(variant("notif_msg_hosted_file_from_consumer.json", edit))
    event = frame.changes[0]["event"]
    assert content_type(event) == "hosted/file"
    assert event["contentType"] == spelling  # the raw spelling is kept for storage
    assert event["message"]["relativePath"].endswith(".PNG")
    assert rich_content(event) is None  # a hosted file's message object is not rich content


def test_text_content_type_verbatim() -> None:
    frame = notification(text("notif_msg_content_text_from_agent.json"))
    assert content_type(frame.changes[0]["event"]) == "text/plain"
    assert content_type({"type": "ContentEvent", "contentType": "forms/secure-invitation"}) == (
        "forms/secure-invitation"
    )


# --- variants built from the examples --------------------------------------------------------


PARTICIPANT_SHAPES: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
    ("array", {"participants": [{"id": CONSUMER, "role": "CONSUMER"}]}, [(CONSUMER, "CONSUMER")]),
    ("bare-array-element", {"participants": {"id": AGENT1, "role": "ASSIGNED_AGENT"}},
     [(AGENT1, "ASSIGNED_AGENT")]),
    ("pid-map", {"participantsPId": {"CONSUMER": [CONSUMER], "READER": [AGENT1, AGENT2]}},
     [(CONSUMER, "CONSUMER"), (AGENT1, "READER"), (AGENT2, "READER")]),
    ("legacy-map-only", {"participants": {"CONSUMER": ["legacy-c"], "MANAGER": "legacy-m"}},
     [("legacy-c", "CONSUMER"), ("legacy-m", "MANAGER")]),
    ("both-maps-prefer-pid",  # agent v2 raw: legacy ids beside the PId UUIDs
     {"participants": {"CONSUMER": ["legacy-c"], "ASSIGNED_AGENT": ["legacy-a"]},
      "participantsPId": {"CONSUMER": [CONSUMER], "ASSIGNED_AGENT": [AGENT1]}},
     [(CONSUMER, "CONSUMER"), (AGENT1, "ASSIGNED_AGENT")]),
    ("empty-array-beside-pid-map", {"participants": [], "participantsPId": {"CONSUMER": CONSUMER}},
     [(CONSUMER, "CONSUMER")]),
    ("unknown-role-and-junk-kept-verbatim",
     {"participants": [{"id": BOT, "role": "FUTURE_ROLE", "x": 1}, {"role": "NO_ID"}, None,
                       {"id": 42}, CONTROLLER]},
     [(BOT, "FUTURE_ROLE"), ("42", ""), (CONTROLLER, "")]),
    ("none", {}, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("shape", "conversation_details", "expected"),
    PARTICIPANT_SHAPES,
    ids=[row[0] for row in PARTICIPANT_SHAPES],
)
def test_participants_shapes(
    shape: str, conversation_details: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    def edit(data: dict[str, Any]) -> None:
        target = details(data["body"]["changes"][0])
        target.pop("participants")
        target.update(conversation_details)

    frame = notification(variant("notif_exconv_upsert_agent_joined.json", edit))
    assert [(p.id, p.role) for p in payload.participants(details(frame.changes[0]))] == expected


ORIGINATORS: list[tuple[str, Callable[[dict[str, Any]], object], str | None, str | None]] = [
    ("metadata", lambda c: None, AGENT1, "ASSIGNED_AGENT"),
    ("originatorId-only", lambda c: c.pop("originatorMetadata"), AGENT1, None),
    ("originatorPId-only",
     lambda c: (c.pop("originatorMetadata"), c.pop("originatorId"), c.update(originatorPId=BOT)),
     BOT, None),
    ("metadata-wins", lambda c: c.update(originatorId="other", originatorPId="other"),
     AGENT1, "ASSIGNED_AGENT"),
    ("empty-metadata-id", lambda c: c["originatorMetadata"].update(id=""), AGENT1,
     "ASSIGNED_AGENT"),
    ("unknown-role", lambda c: c["originatorMetadata"].update(role="FUTURE"), AGENT1, "FUTURE"),
    ("none", lambda c: (c.pop("originatorMetadata"), c.pop("originatorId")), None, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "edit_change", "expected_id", "expected_role"),
    ORIGINATORS,
    ids=[row[0] for row in ORIGINATORS],
)
def test_originator_variants(
    case: str,
    edit_change: Callable[[dict[str, Any]], object],
    expected_id: str | None,
    expected_role: str | None,
) -> None:
    raw = variant(
        "notif_msg_content_text_from_agent.json", lambda d: edit_change(d["body"]["changes"][0])
    )
    change = notification(raw).changes[0]
    assert (originator_id(change), originator_role(change)) == (expected_id, expected_role)


# --- odd shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"type": "RichContentEvent", "content": {"type": "vertical", "elements": []}},
         {"type": "vertical", "elements": []}),
        ({"type": "RichContentEvent", "content": '{"type": "vertical", "elements": []}'},
         {"type": "vertical", "elements": []}),  # REST history sends it as text
        ({"type": "RichContent", "message": {"type": "horizontal"}}, {"type": "horizontal"}),
        ({"type": "RichContentEvent", "message": '{"type": "carousel"}'}, {"type": "carousel"}),
        ({"type": "RichContentEvent", "content": "{not json"}, None),
        ({"type": "RichContentEvent", "content": "[1, 2]"}, None),
        ({"type": "ContentEvent", "contentType": "text/plain", "message": "hi"}, None),
        ({"type": "RichContentEvent"}, None),
        ("not an event", None),
    ],
)  # fmt: skip
def test_rich_content_variants(event: Any, expected: dict[str, Any] | None) -> None:
    assert rich_content(event) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(7, 7), ("7", 7), (" 12 ", 12), (7.0, 7), (7.5, None), ("seven", None), ("", None),
     (True, None), (None, None), ("-1", -1), ("1_000", None), ("٣", None)],
)  # fmt: skip
def test_sequence_tolerates_numeric_strings(value: Any, expected: int | None) -> None:
    assert change_sequence({"sequence": value}) == expected


def test_messaging_change_without_conversation_id() -> None:
    def edit(data: dict[str, Any]) -> None:
        del data["body"]["changes"][0]["conversationId"]
        data["body"]["changes"][0]["serverTimestamp"] = "1732530120455"

    change = notification(variant("notif_msg_content_text_from_agent.json", edit)).changes[0]
    assert change_conversation_id(change) is None
    assert change_dialog_id(change) == CONV
    assert server_timestamp_ms(change) == 1732530120455


def test_dialogs_accept_a_bare_object_and_plain_id_lists() -> None:
    cobrowse = {
        "dialogId": "cb-1",
        "participants": [CONSUMER, AGENT1],
        "dialogType": "OTHER",
        "channelType": "COBROWSE",
        "metaData": {"sessionState": "INVITED"},
        "state": "OPEN",
    }
    (dialog,) = payload.dialogs({"dialogs": cobrowse})
    assert dialog == DialogInfo(
        "cb-1",
        "OTHER",
        "OPEN",
        "COBROWSE",
        None,
        (Participant(CONSUMER, ""), Participant(AGENT1, "")),
        {},
    )
    assert dialog.data is cobrowse
    assert payload.dialogs({"dialogs": [{"state": "OPEN"}, None, 3, {"dialogId": ""}]}) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, []), ([], []), ([1, 2], [1, 2]), ({"a": 1}, [{"a": 1}]), ("x", ["x"]), (0, [0])],
)
def test_as_list(value: Any, expected: list[Any]) -> None:
    assert as_list(value) == expected


ODD_INPUTS: list[Any] = [
    None, 1, "x", [], {}, {"result": 1}, {"result": {"conversationDetails": []}},
    {"result": {"conversationDetails": {"metaDataLastUpdateTs": "soon"}, "lastUpdateTime": []}},
    {"event": "x"}, {"event": {"type": 5, "content": 5}}, {"originatorMetadata": "x"},
    {"dialogs": [1, None, {"dialogId": None}, {"dialogId": "d", "participantsDetails": "p"}]},
    {"participants": [None, 1.5, {"role": "X"}]}, {"participants": {"ROLE": {"id": "x"}}},
    {"participantsPId": [], "participants": "solo"}, {"sequence": {}, "serverTimestamp": []},
    {"contentType": 3, "content": {"a": 1}},
]  # fmt: skip
NORMALISERS: list[Callable[[Any], object]] = [
    payload.participants, payload.dialogs, originator_id, originator_role, change_conversation_id,
    change_dialog_id, change_sequence, server_timestamp_ms, event_type, rich_content,
    content_type, as_list,
]  # fmt: skip


@pytest.mark.parametrize("normaliser", NORMALISERS, ids=lambda f: f.__name__)
def test_normalisers_never_raise_on_odd_input(normaliser: Callable[[Any], object]) -> None:
    for value in ODD_INPUTS:
        normaliser(value)


# -- one-pass readers: the same answers as the extractors, each field looked up once -----------

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.floats(allow_nan=False),
    st.sampled_from(["", "0", "17", " 42 ", "-3", "+5", "x", "UPSERT", "DELETE", CONV, SURVEY]),
)
_VALUES = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["id", "dialogId", "type", "convId", "x"]), inner, max_size=3),
    max_leaves=6,
)
_DIALOG = st.fixed_dictionaries({}, optional={"dialogId": _VALUES, "state": _VALUES})
_DETAILS = _VALUES | st.fixed_dictionaries({}, optional={
    "metaDataLastUpdateTs": _VALUES,
    "dialogs": _VALUES | _DIALOG | st.lists(_DIALOG | _VALUES, max_size=4),
})
_RESULT = _VALUES | st.fixed_dictionaries({}, optional={
    "convId": _VALUES, "lastUpdateTime": _VALUES, "conversationDetails": _DETAILS,
})
_CHANGE = st.fixed_dictionaries({}, optional={
    "type": _VALUES, "result": _RESULT, "conversationId": _VALUES, "serverTimestamp": _VALUES,
    "dialogId": _VALUES, "sequence": _VALUES, "originatorId": _VALUES, "originatorPId": _VALUES,
    "originatorMetadata": _VALUES | st.fixed_dictionaries({}, optional={"id": _VALUES}),
    "event": _VALUES | st.fixed_dictionaries({}, optional={"type": _VALUES}),
})


def _example_changes() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for name in EXAMPLE_NAMES:
        frame = parse_frame(text(name))
        if isinstance(frame, Notification):
            found += frame.changes
    return found


def _as_extractors_read_a_conversation_change(change: dict[str, Any]) -> tuple[Any, ...]:
    kind, result = change.get("type"), change.get("result")
    details = result.get("conversationDetails") if isinstance(result, dict) else None
    return (kind if isinstance(kind, str) else None, change_conversation_id(change),
            server_timestamp_ms(change), result if isinstance(result, dict) else None, details)


def _as_extractors_read_a_messaging_change(change: dict[str, Any]) -> tuple[Any, ...]:
    return (change_dialog_id(change), change_sequence(change), change_conversation_id(change),
            server_timestamp_ms(change), event_type(change), originator_id(change))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_CHANGE)
def test_one_pass_readers_agree_with_the_extractors(change: dict[str, Any]) -> None:
    assert tuple(payload.read_conversation_change(change)) == (
        _as_extractors_read_a_conversation_change(change))
    assert tuple(payload.read_messaging_change(change)) == (
        _as_extractors_read_a_messaging_change(change))
    result = change.get("result")
    details = result.get("conversationDetails") if isinstance(result, dict) else None
    assert payload.dialog_ids(details) == [d.dialog_id for d in payload.dialogs(details)]


@pytest.mark.parametrize("change", _example_changes())
def test_one_pass_readers_agree_with_the_extractors_on_every_example(
    change: dict[str, Any],
) -> None:
    read = payload.read_conversation_change(change)
    assert tuple(read) == _as_extractors_read_a_conversation_change(change)
    assert tuple(payload.read_messaging_change(change)) == (
        _as_extractors_read_a_messaging_change(change))
    assert payload.dialog_ids(read.details) == [d.dialog_id for d in payload.dialogs(read.details)]


# --- scalar readers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("c-0005", "c-0005"), (CONV, CONV), ("", ""), (" 7 ", " 7 "), ("٣", "٣"),
     (7, "7"), (0, "0"), (-3, "-3"), (2**70, str(2**70)),
     (True, None), (False, None), (7.0, None), (None, None), ([7], None), ({"id": "x"}, None)],
)  # fmt: skip
def test_id_text(value: Any, expected: str | None) -> None:
    """Strings verbatim (ids compare as strings); an int is its decimal text; bools are not ids."""
    assert id_text(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(7, 7), (0, 0), (-7, -7), (2**63, 2**63),
     (7.0, 7), (-0.0, 0), (1732530120455.0, 1732530120455), (1e20, 10**20),
     ("7", 7), ("007", 7), ("-3", -3), ("+5", 5), (" 42 ", 42), ("\t-12\n", -12), (" +0 ", 0),
     (7.5, None), (float("inf"), None), (float("-inf"), None), (float("nan"), None),
     (True, None), (False, None),
     ("", None), ("  ", None), ("-", None), ("+", None), ("- 3", None), ("+-3", None),
     ("--3", None), ("1_000", None), ("1 000", None), ("1e3", None), ("7.0", None),
     ("0x10", None), ("seven", None), ("9" * 100, int("9" * 100)), ("9" * 101, None),
     ("1" * 5000, None), ("-" + "1" * 5000, None),
     ("٣", None), ("-٣", None), ("\uff17", None), ("²", None),
     (None, None), ([7], None), ({"value": 7}, None), (b"7", None)],
)  # fmt: skip
def test_as_int(value: Any, expected: int | None) -> None:
    """Ints, integral floats and ASCII decimal strings (sign and surrounding spaces allowed);
    bools, fractions, non-ASCII digits and anything else read as None."""
    got = as_int(value)
    assert got == expected
    if expected is not None:
        assert type(got) is int


@pytest.mark.parametrize(
    ("value", "expected"),
    [("x", "x"), ("", ""), (" ", " "), ("٣", "٣"),
     (None, ""), (0, ""), (7, ""), (True, ""), (1.5, ""), (["x"], ""), ({"a": "x"}, ""),
     (b"x", "")],
)  # fmt: skip
def test_text_or_empty(value: Any, expected: str) -> None:
    assert text_or_empty(value) == expected


def test_huge_digit_strings_never_raise_out_of_the_readers() -> None:
    huge = "1" * 5000  # past Python's int-from-text limit: int() would raise ValueError
    change = {"sequence": huge, "serverTimestamp": huge, "dialogId": "d", "conversationId": "c"}
    assert payload.change_sequence(change) is None
    assert payload.server_timestamp_ms(change) is None
    assert payload.read_messaging_change(change).sequence is None


def test_an_id_number_too_long_to_print_is_no_id() -> None:
    assert payload.id_text(10**5000) is None
