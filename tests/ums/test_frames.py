"""Frames: every example frame parses and keeps its raw text; the normalisers give the right
values per example and tolerate every variant in protocol.md; malformed input is refused with
the exact raw text; built requests reproduce the request examples and pass LivePerson's schemas.

Examples and schemas are the fixtures in tests/protocol/ (tests/protocol_files.py); a missing
fixture fails the test.
Parsing a request example gives a `Request` frame (the simulator's view of client requests).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorder.errors import RecorderError
from recorder.ums import frames
from recorder.ums.frames import (
    DialogInfo,
    MalformedFrame,
    Notification,
    Participant,
    Request,
    Response,
    Unknown,
    as_list,
    build_request,
    change_conversation_id,
    change_dialog_id,
    change_sequence,
    content_type,
    event_type,
    is_conversation_notification,
    is_messaging_notification,
    logical_type,
    originator_id,
    originator_role,
    parse_frame,
    rich_content,
    server_timestamp_ms,
)
from tests.protocol_files import example_names, load_validator
from tests.protocol_files import example_text as text

EXAMPLE_NAMES = example_names()

# The cast of examples/INDEX.md.
CONSUMER = "b3f1c2d4-8a9e-4f6b-9c0d-2e7a5b1f3c88"
AGENT1 = "5c2e9f10-7d3a-5b8e-a1c4-9e0f2d6b7a31"
AGENT2 = "8a41d7e2-3c9b-5f06-b2d8-4e7c1a9f0b55"
BOT = "c7d2e8f4-1b6a-5c93-8e0d-3f5a7b9c2d11"
CONTROLLER = "e1f3a5c7-9b2d-5e4f-8a6c-0d2e4f6a8b90"
CONV = "4f7a9c2e-3b1d-4e8f-a6c5-9d0b2e7f1a36"
SURVEY = "Kq7ZrT2mS1uVx9Ww3YbA0c"
OLD_CONV = "9e2d4b6a-1c3f-4a5e-b7d9-0f2a4c6e8b13"
SUBSCRIPTION = "d2c4e6f8-0a1b-4c3d-9e5f-7a8b9c0d1e2f"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiM2YxIn0.c2ln"


def example(name: str) -> dict[str, Any]:
    data = orjson.loads(text(name))
    assert isinstance(data, dict)
    return data


def variant(name: str, edit: Callable[[dict[str, Any]], object]) -> str:
    """The example's JSON after `edit` changed it in place."""
    data = example(name)
    edit(data)
    return orjson.dumps(data).decode()


def notification(raw: str) -> Notification:
    frame = parse_frame(raw)
    assert isinstance(frame, Notification), frame
    return frame


def response(raw: str) -> Response:
    frame = parse_frame(raw)
    assert isinstance(frame, Response), frame
    return frame


def details(change: dict[str, Any]) -> Any:
    return change["result"]["conversationDetails"]


# --- every example ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_every_example_parses_and_keeps_its_raw_text(name: str) -> None:
    raw = text(name)
    data = orjson.loads(raw)
    frame = parse_frame(raw)
    expected = {"req": Request, "resp": Response, "notif": Notification}[name.split("_")[0]]
    assert type(frame) is expected
    assert frame.raw == raw
    assert frame.data == data
    assert parse_frame(raw.encode("utf-8")) == frame  # binary frames parse alike
    if isinstance(frame, Response):
        assert (frame.req_id, frame.code, frame.type, frame.body) == (
            data["reqId"], data["code"], data["type"], data["body"],
        )  # fmt: skip
    elif isinstance(frame, Request):
        assert (frame.req_id, frame.type, frame.body) == (
            data["id"],
            data["type"],
            data.get("body"),
        )
    else:
        assert isinstance(frame, Notification)
        assert frame.type == data["type"]
        assert frame.changes == tuple(data["body"]["changes"])
        assert frame.subscription_id == data["body"].get("subscriptionId")


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
         [(p.id, p.role) for p in frames.participants(details(change))],
         [(d.dialog_id, d.dialog_type, d.state) for d in frames.dialogs(details(change))])
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
    main, survey = frames.dialogs(details(frame.changes[0]))
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
    (dialog,) = frames.dialogs(details(frame.changes[0]))
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


def test_private_message_audience_is_kept() -> None:
    frame = notification(text("notif_msg_private_agent_message_audience.json"))
    assert frame.changes[0]["messageAudience"] == "AGENTS_AND_MANAGERS"
    assert change_sequence(frame.changes[0]) == 10


# --- variants built from the examples --------------------------------------------------------


def test_bare_change_object_counts_as_one_change() -> None:
    first = example("notif_msg_backfill_batch.json")["body"]["changes"][0]

    def edit(data: dict[str, Any]) -> None:
        data["body"]["changes"] = first

    frame = notification(variant("notif_msg_backfill_batch.json", edit))
    assert frame.changes == (first,)


def test_changes_that_are_not_objects_are_left_out() -> None:
    first = example("notif_msg_backfill_batch.json")["body"]["changes"][0]

    def edit(data: dict[str, Any]) -> None:
        data["body"]["changes"] = [1, first, "x", None]

    raw = variant("notif_msg_backfill_batch.json", edit)
    frame = notification(raw)
    assert frame.changes == (first,)
    assert frame.raw == raw


@pytest.mark.parametrize("body", [{}, {"changes": None}, None, "text"])
def test_notification_without_changes_has_none(body: Any) -> None:
    raw = orjson.dumps(
        {"kind": "notification", "type": "ms.MessagingEventNotification", "body": body}
    )
    assert notification(raw.decode()).changes == ()


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
    assert [(p.id, p.role) for p in frames.participants(details(frame.changes[0]))] == expected


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


@pytest.mark.parametrize(
    "type_string",
    ["cqm.ExConversationChangeNotification", "aam.ExConversationChangeNotification",
     ".ams.aam.ExConversationChangeNotification"],
)  # fmt: skip
def test_conversation_notification_aliases(type_string: str) -> None:
    original = notification(text("notif_exconv_upsert_agent_joined.json"))
    frame = notification(
        variant("notif_exconv_upsert_agent_joined.json", lambda d: d.update(type=type_string))
    )
    assert (frame.type, frame.name) == (type_string, "ExConversationChangeNotification")
    assert is_conversation_notification(frame) and is_conversation_notification(type_string)
    assert frame.changes == original.changes


@pytest.mark.parametrize(
    "type_string", ["ms.OnlineEventDistribution", ".ams.ms.OnlineEventDistribution"]
)
@pytest.mark.parametrize("wrapped", [False, True], ids=["single-change-body", "changes-body"])
def test_online_event_distribution(type_string: str, wrapped: bool) -> None:
    change = example("notif_msg_content_text_from_agent.json")["body"]["changes"][0]
    body = {"changes": [change]} if wrapped else change
    frame = notification(
        orjson.dumps({"kind": "notification", "type": type_string, "body": body}).decode()
    )
    assert frame.name == "OnlineEventDistribution"
    assert is_messaging_notification(frame) and not is_conversation_notification(frame)
    assert frame.changes == (change,)
    assert (change_sequence(frame.changes[0]), originator_id(frame.changes[0])) == (4, AGENT1)


def test_unknown_notification_type_is_kept() -> None:
    raw = variant(
        "notif_msg_backfill_batch.json", lambda d: d.update(type="zz.BrandNewNotification")
    )
    frame = notification(raw)
    assert (frame.type, frame.name, len(frame.changes)) == (
        "zz.BrandNewNotification",
        "BrandNewNotification",
        4,
    )
    assert not is_messaging_notification(frame) and not is_conversation_notification(frame)


def test_unknown_fields_and_event_types_are_kept_verbatim() -> None:
    def edit(data: dict[str, Any]) -> None:
        data["futureTop"] = {"a": 1}
        data["body"]["futureBody"] = [1, 2]
        data["body"]["dialogId"] = CONV  # NAS adds this beside `changes` on the agent side
        change = data["body"]["changes"][0]
        change["futureChange"] = "x"
        change["event"] = {
            "type": "HologramEvent",
            "beam": {"colour": "blue"},
            "contentType": "x/y",
        }

    raw = variant("notif_msg_content_text_from_agent.json", edit)
    frame = notification(raw)
    change = frame.changes[0]
    assert frame.data["futureTop"] == {"a": 1} and frame.body["futureBody"] == [1, 2]
    assert change["futureChange"] == "x"
    assert event_type(change) == "HologramEvent"
    assert change["event"]["beam"] == {"colour": "blue"}
    assert content_type(change["event"]) == "x/y" and rich_content(change["event"]) is None
    assert (change_sequence(change), originator_id(change)) == (4, AGENT1)
    assert frame.raw == raw


@pytest.mark.parametrize(
    ("type_string", "body_key", "expected_body"),
    [
        ("GenericSubscribeResponse", "present", {}),
        (".ams.GenericSubscribeResponse", "absent", None),  # one doc example has no body
        (".ams.GenericSubscribe$Response", "null", None),
        ("StringResponse", "text", "OK Conversation resolved successfully"),
        (".ReqBody$StringResp", "text", "OK Conversation resolved successfully"),
    ],
)
def test_response_aliases_and_bodies(type_string: str, body_key: str, expected_body: Any) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["type"] = type_string
        if body_key == "absent":
            del data["body"]
        elif body_key == "null":
            data["body"] = None
        elif body_key == "text":
            data["body"] = expected_body

    frame = response(variant("resp_subscribe_messaging_events_ok.json", edit))
    assert (frame.req_id, frame.code, frame.type, frame.body) == (
        "c-0005",
        200,
        type_string,
        expected_body,
    )


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [("reqId", 7, "7"), ("reqId", "c-0005", "c-0005"), ("code", "200", 200), ("code", " 429 ", 429),
     ("code", 503.0, 503), ("code", 401, 401)],
)  # fmt: skip
def test_response_id_and_code_are_normalised(field: str, value: Any, expected: Any) -> None:
    frame = response(
        variant("resp_subscribe_messaging_events_ok.json", lambda d: d.update({field: value}))
    )
    assert (frame.req_id if field == "reqId" else frame.code) == expected


@pytest.mark.parametrize(
    ("raw", "expected_class"),
    [
        ('{"reqId": "1", "code": 200, "type": "StringResponse", "body": "OK"}', Response),
        ('{"id": "0", "type": "InitConnection", "headers": []}', Request),  # §3.1: no kind
        ('{"type": "ms.MessagingEventNotification", "body": {"changes": []}}', Notification),
        ('{"kind": null, "type": ".ams.ms.OnlineEventDistribution", "body": {}}', Notification),
        ('{"kind": "event", "type": "Foo"}', Unknown),
        ('{"kind": "req", "id": 5, "type": "GetClock"}', Request),
    ],
)
def test_kind_is_inferred_or_kept(raw: str, expected_class: type) -> None:
    frame = parse_frame(raw)
    assert type(frame) is expected_class and frame.raw == raw
    if isinstance(frame, Unknown):
        assert (frame.kind, frame.data["type"]) == ("event", "Foo")
    if isinstance(frame, Request):
        assert frame.req_id in ("0", "5")


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
    (dialog,) = frames.dialogs({"dialogs": cobrowse})
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
    assert frames.dialogs({"dialogs": [{"state": "OPEN"}, None, 3, {"dialogId": ""}]}) == []


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
    frames.participants, frames.dialogs, originator_id, originator_role, change_conversation_id,
    change_dialog_id, change_sequence, server_timestamp_ms, event_type, rich_content,
    content_type, as_list,
]  # fmt: skip


@pytest.mark.parametrize("normaliser", NORMALISERS, ids=lambda f: f.__name__)
def test_normalisers_never_raise_on_odd_input(normaliser: Callable[[Any], object]) -> None:
    for value in ODD_INPUTS:
        normaliser(value)


@pytest.mark.parametrize(
    ("type_string", "expected"),
    [("cqm.ExConversationChangeNotification", "ExConversationChangeNotification"),
     (".ams.aam.ExConversationChangeNotification", "ExConversationChangeNotification"),
     ("ms.MessagingEventNotification", "MessagingEventNotification"),
     ("GenericSubscribeResponse", "GenericSubscribeResponse"),
     (".ams.GenericSubscribeResponse", "GenericSubscribeResponse"),
     (".ams.GenericSubscribe$Response", "GenericSubscribeResponse"),
     (".ams.aam.SubscribeExConversations$Response", "SubscribeExConversationsResponse"),
     (".ams.ms.PublishEvent$Response", "PublishEventResponse"),
     (".GetClock$Response", "GetClockResponse"),
     (".ReqBody$StringResp", "StringResp"), ("StringResponse", "StringResponse"),
     ("a.b$c", "c"), ("", ""), ("cqm.", "cqm.")],
)  # fmt: skip
def test_logical_type(type_string: str, expected: str) -> None:
    assert logical_type(type_string) == expected


# --- malformed input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"kind": "resp", "reqId": "1", "code": 200, "body": "caf\xe9"}', "not UTF-8"),
        ("not json", "not JSON"),
        ("", "not JSON"),
        ('{"kind": "resp", "reqId": "1", "code": 200', "not JSON"),
        ("[]", "JSON is an array"),
        ("42", "JSON is a number"),
        ('"text"', "JSON is a string"),
        ("null", "JSON is null"),
        ("{}", "no kind"),
        ('{"kind": 3}', "kind is a number"),
        ('{"kind": ["resp"], "body": {}}', "kind is an array"),
        ('{"type": "SomethingElse", "body": {}}', "no kind"),
        ('{"kind": "resp", "code": 200, "type": "StringResponse"}', "without a usable reqId"),
        ('{"kind": "resp", "reqId": null, "code": 200}', "without a usable reqId"),
        ('{"kind": "resp", "reqId": "1", "type": "StringResponse"}', "without a usable code"),
        ('{"kind": "resp", "reqId": "1", "code": "OK"}', "without a usable code"),
        ('{"kind": "notification", "body": {"changes": []}}', "notification without a type"),
        ('{"kind": "req", "type": "GetClock"}', "request without a usable id"),
    ],
)
def test_malformed_input_is_refused_with_its_exact_raw(raw: str | bytes, reason: str) -> None:
    with pytest.raises(MalformedFrame) as caught:
        parse_frame(raw)
    error = caught.value
    assert isinstance(error, RecorderError)
    assert error.raw == raw and type(error.raw) is type(raw)
    assert error.raw_bytes == (raw if isinstance(raw, bytes) else raw.encode())
    assert reason in error.reason and len(error.reason) < 100
    assert str(error) == f"malformed frame: {error.reason}"


def test_malformed_raw_is_never_truncated() -> None:
    raw = (
        '{"kind": "notification", "type": "ms.MessagingEventNotification", "body": ' + "x" * 300_000
    )
    with pytest.raises(MalformedFrame) as caught:
        parse_frame(raw)
    assert caught.value.raw == raw and len(caught.value.reason) < 100


def test_unusable_response_still_names_its_request() -> None:
    with pytest.raises(MalformedFrame) as caught:
        parse_frame('{"kind": "resp", "reqId": 17, "type": "StringResponse", "body": "?"}')
    assert caught.value.req_id == "17"
    assert caught.value.data == {"kind": "resp", "reqId": 17, "type": "StringResponse", "body": "?"}


# --- building requests -----------------------------------------------------------------------


REQUEST_EXAMPLES = example_names("req_")


@pytest.mark.parametrize("name", REQUEST_EXAMPLES)
def test_build_request_reproduces_each_request_example(name: str) -> None:
    data = example(name)
    built = build_request(
        data["type"], data.get("body"), request_id=data["id"],
        metadata=data.get("metadata"), headers=data.get("headers"),
    )  # fmt: skip
    assert orjson.loads(built) == data
    frame = parse_frame(built)
    assert isinstance(frame, Request)
    assert (frame.req_id, frame.type, frame.body, frame.raw) == (
        data["id"],
        data["type"],
        data.get("body"),
        built,
    )


def test_request_constants_are_the_example_types() -> None:
    types = {example(n)["type"] for n in REQUEST_EXAMPLES}
    assert types == set(frames.REQUEST_TYPES)


EVENT_PATH = "/v1/AUTH_async-images/71234567/b3f1c2d4_uuid_0b8e2f6a_25-11-2024_10-21-07-518.PNG"
# What the client sends, per request type (§4); every type must appear at least once.
CLIENT_REQUESTS: list[tuple[str, dict[str, Any] | None, list[Any] | None]] = [
    (frames.INIT_CONNECTION, None, None),
    (frames.GET_CLOCK, None, None),
    (frames.SUBSCRIBE_EX_CONVERSATIONS,
     {"minLastUpdatedTime": 0, "convState": ["OPEN", "CLOSE"], "stage": ["OPEN", "CLOSE"]}, None),
    (frames.UNSUBSCRIBE_EX_CONVERSATIONS, {"subscriptionId": SUBSCRIPTION}, None),
    (frames.SUBSCRIBE_MESSAGING_EVENTS,
     {"dialogId": CONV, "conversationId": CONV, "fromSeq": 0}, None),
    (frames.SUBSCRIBE_MESSAGING_EVENTS,
     {"dialogId": SURVEY, "conversationId": CONV, "fromSeq": 9}, None),
    (frames.PUBLISH_EVENT, {"dialogId": CONV, "conversationId": CONV, "event": {
        "type": "ContentEvent", "contentType": "text/plain", "message": "hello"}},
     [{"type": "ExternalId", "id": "msg-1"}]),
    (frames.PUBLISH_EVENT, {"dialogId": CONV, "event": {
        "type": "AcceptStatusEvent", "status": "READ", "sequenceList": [2, 4]}}, None),
    (frames.PUBLISH_EVENT, {"dialogId": CONV, "event": {
        "type": "ChatStateEvent", "chatState": "COMPOSING"}}, None),
    (frames.PUBLISH_EVENT, {"dialogId": CONV, "event": {
        "type": "ContentEvent", "contentType": "hosted/file",
        "message": {"caption": "c", "relativePath": EVENT_PATH, "fileType": "PNG"}}}, None),
    (frames.CONSUMER_REQUEST_CONVERSATION, None, None),
    (frames.CONSUMER_REQUEST_CONVERSATION,
     {"brandId": "71234567", "skillId": "-1", "channelType": "MESSAGING", "ttrDefName": None},
     None),
    (frames.UPDATE_CONVERSATION_FIELD, {"conversationId": CONV, "conversationField": [
        {"field": "ConversationStateField", "conversationState": "CLOSE"}]}, None),
    (frames.UPDATE_CONVERSATION_FIELD, {"conversationId": CONV, "conversationField": [
        {"field": "CSATRate", "csatRate": 5, "csatResolutionConfirmation": True,
         "status": "FILLED"}]}, None),
    (frames.UPDATE_CONVERSATION_FIELD, {"conversationId": CONV, "conversationField": [
        {"field": "TTRField", "ttrType": "URGENT", "value": 300}]}, None),
    (frames.GENERATE_UPLOAD_URL, {"fileSize": "48213", "fileType": "PNG"}, None),
    (frames.GENERATE_DOWNLOAD_URL, {"relativePath": EVENT_PATH}, None),
]  # fmt: skip
# schemas/README.md "Mistakes left as they are": the ClientProperties `features` enum predates
# QUICK_REPLIES and MULTI_DIALOG; FILE_SHARING is missing too although tutorials use it (§2.3).
NEWER_FEATURES = {"QUICK_REPLIES", "MULTI_DIALOG", "FILE_SHARING"}
FEATURE_ERROR = re.compile(r"^\$\.headers\[0\]\.features\[\d+\]: '(\w+)' is not one of ")


@pytest.fixture(scope="module")
def schemas() -> ModuleType:
    """tests/protocol/schemas/validate.py (validate_frame, NoSchema)."""
    return load_validator()


def test_client_requests_cover_every_request_type() -> None:
    assert {t for t, _, _ in CLIENT_REQUESTS} == set(frames.REQUEST_TYPES)


@pytest.mark.parametrize(
    ("request_type", "body", "metadata"),
    CLIENT_REQUESTS,
    ids=[f"{row[0]}-{n}" for n, row in enumerate(CLIENT_REQUESTS)],
)
def test_built_requests_pass_the_schemas(
    schemas: ModuleType, request_type: str, body: dict[str, Any] | None, metadata: list[Any] | None
) -> None:
    headers = (
        frames.init_connection_headers(JWT) if request_type == frames.INIT_CONNECTION else None
    )
    frame = orjson.loads(
        build_request(request_type, body, request_id="c-42", metadata=metadata, headers=headers)
    )
    if request_type == frames.GET_CLOCK:  # schemas/README.md: GetClock has no schema
        with pytest.raises(schemas.NoSchema):
            schemas.validate_frame(frame)
        return
    errors = schemas.validate_frame(frame)
    if request_type == frames.INIT_CONNECTION:
        # Only the known-old features enum may complain, and nothing else once those are gone.
        assert errors and all(
            (m := FEATURE_ERROR.match(e)) and m[1] in NEWER_FEATURES for e in errors
        ), errors
        features = frame["headers"][0]["features"]
        frame["headers"][0]["features"] = [f for f in features if f not in NEWER_FEATURES]
        errors = schemas.validate_frame(frame)
    assert errors == []


@pytest.mark.parametrize(
    ("request_type", "body", "options", "message"),
    [
        (frames.GET_CLOCK, None, {"request_id": ""}, "1-64"),
        (frames.GET_CLOCK, None, {"request_id": "x" * 65}, "1-64"),
        (frames.INIT_CONNECTION, None, {"request_id": "1"}, "headers"),
        (frames.INIT_CONNECTION, {}, {"request_id": "1", "headers": []}, "no body"),
        (frames.PUBLISH_EVENT, {}, {"request_id": "1", "headers": []}, "no headers"),
    ],
)
def test_build_request_refuses_what_the_protocol_forbids(
    request_type: str, body: dict[str, Any] | None, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_request(request_type, body, **options)


def test_build_request_keeps_keys_minimal() -> None:
    assert orjson.loads(build_request(frames.GET_CLOCK, request_id="x" * 64)) == {
        "kind": "req", "id": "x" * 64, "type": "GetClock",
    }  # fmt: skip
    built = orjson.loads(build_request(frames.PUBLISH_EVENT, {}, request_id="7", metadata=[]))
    assert built == {"kind": "req", "id": "7", "type": "ms.PublishEvent", "body": {}}


def test_client_properties() -> None:
    header = frames.client_properties(frames.DEFAULT_FEATURES)
    assert header["type"] == ".ClientProperties"
    assert {
        "MULTI_DIALOG",
        "RICH_CONTENT",
        "QUICK_REPLIES",
        "FILE_SHARING",
        "PHOTO_SHARING",
    } <= set(header["features"])
    assert header["deviceFamily"] in ("DESKTOP", "TABLET", "MOBILE", "OTHER")
    assert header["os"] in ("WINDOWS", "LINUX", "OSX", "ANDROID", "IOS", "OTHER")
    assert orjson.loads(orjson.dumps(header)) == header  # fits the Client-Properties header
    init = frames.client_properties(
        iter(["RICH_CONTENT", "X", "RICH_CONTENT"]), init_connection=True
    )
    assert (init["type"], init["features"]) == (
        ".ams.headers.ClientProperties",
        ["RICH_CONTENT", "X"],
    )


def test_init_connection_headers() -> None:
    properties, authentication = frames.init_connection_headers(JWT, ["MULTI_DIALOG"])
    assert (properties["type"], properties["features"]) == (
        ".ams.headers.ClientProperties",
        ["MULTI_DIALOG"],
    )
    assert authentication == {"type": ".ams.headers.ConsumerAuthentication", "jwt": JWT}


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
    assert tuple(frames.read_conversation_change(change)) == (
        _as_extractors_read_a_conversation_change(change))
    assert tuple(frames.read_messaging_change(change)) == (
        _as_extractors_read_a_messaging_change(change))
    result = change.get("result")
    details = result.get("conversationDetails") if isinstance(result, dict) else None
    assert frames.dialog_ids(details) == [d.dialog_id for d in frames.dialogs(details)]


@pytest.mark.parametrize("change", _example_changes())
def test_one_pass_readers_agree_with_the_extractors_on_every_example(
    change: dict[str, Any],
) -> None:
    read = frames.read_conversation_change(change)
    assert tuple(read) == _as_extractors_read_a_conversation_change(change)
    assert tuple(frames.read_messaging_change(change)) == (
        _as_extractors_read_a_messaging_change(change))
    assert frames.dialog_ids(read.details) == [d.dialog_id for d in frames.dialogs(read.details)]
