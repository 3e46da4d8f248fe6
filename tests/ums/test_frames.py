"""Frames: every example frame parses and keeps its raw text; the kind is inferred where it is
missing and type aliases resolve; unknown fields and types pass through; malformed input is
refused with the exact raw text; built requests reproduce the request examples and pass
LivePerson's schemas. What a payload says (participants, dialogs, change fields, rich content)
is tested in test_payload.py, which shares this module's cast and example helpers.

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

from recorder.errors import RecorderError
from recorder.ums import frames
from recorder.ums.frames import (
    MalformedFrame,
    Notification,
    Request,
    Response,
    Unknown,
    build_request,
    is_conversation_notification,
    is_messaging_notification,
    logical_type,
    parse_frame,
)
from recorder.ums.payload import (
    change_sequence,
    content_type,
    event_type,
    originator_id,
    rich_content,
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


def test_a_response_code_of_thousands_of_digits_is_malformed_not_a_crash() -> None:
    raw = '{"kind": "resp", "reqId": "1", "code": "' + "1" * 5000 + '"}'
    with pytest.raises(MalformedFrame, match="code"):
        parse_frame(raw)
