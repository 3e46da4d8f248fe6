"""Frames the simulator sends, checked against LivePerson's schemas and the example frames.

One rich scenario (storyline, transfers, TTR, CSAT, receipts, typing, rich content, a hosted
file, surveys, every request type, errors) is recorded once per module; a second run adds the
shape variants and unknown events. Failures must be the published schemas' known-old points
(tests/protocol/schemas/README.md) or, in the variant run, what each variant deliberately does.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from typing import Any

import pytest

from recorder.simulator import VARIANT_KINDS, Faults, SentFrame, Simulator
from recorder.simulator.journal import changes_of
from tests.protocol_files import example_json, example_names, load_validator
from tests.simclient import PlainClient, key_paths

Frame = dict[str, Any]
ACCOUNT = "71234567"
CLIENT_PROPERTIES = {
    "type": ".ams.headers.ClientProperties", "appId": "acme-recorder", "appVersion": "0.1.0",
    "deviceFamily": "DESKTOP", "os": "LINUX", "integration": "BRAND_SDK",
    "integrationVersion": "0.1.0", "timeZone": "Europe/Berlin",
    "features": ["RICH_CONTENT", "QUICK_REPLIES", "MULTI_DIALOG", "PHOTO_SHARING"],
}


async def wait_until(condition: Callable[[], bool], within: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def scenario(faults: Faults) -> list[SentFrame]:
    """Everything a consumer connection can see, driven by the client and by the model."""
    async with Simulator(account=ACCOUNT, seed=21, reply_delay_s=0.005, faults=faults) as sim:
        consumer = sim.new_consumer()
        c = await PlainClient.connect(sim, None, features=None)
        await c.request("GetClock")  # 401: not authenticated yet
        auth = {"type": ".ams.headers.ConsumerAuthentication", "jwt": sim.issue_token(consumer)}
        await c.request("InitConnection", headers=[CLIENT_PROPERTIES, auth])
        await c.request("GetClock")
        await c.request("KeepAlive")
        everything = {"minLastUpdatedTime": 0, "convState": ["OPEN", "CLOSE"],
                      "stage": ["OPEN", "CLOSE"]}
        await c.request("cqm.SubscribeExConversations", everything)
        await c.request("cqm.SubscribeExConversations", {"convState": ["OPEN"]})

        async def request(type_: str, body: Frame | None = None, **extra: Any) -> Frame:
            return await c.request(type_, body, **extra)

        async def new_conversation() -> str:
            await request("cm.ConsumerRequestConversation", {"brandId": ACCOUNT, "skillId": "-1",
                                                             "channelType": "MESSAGING"})
            await wait_until(lambda: sim.world.open_conversation(consumer) is not None)
            conv = sim.world.open_conversation(consumer)
            assert conv is not None
            return conv.conv_id

        def publish(conv: str, event: Frame, **extra: Any) -> Any:
            return request("ms.PublishEvent", {"dialogId": conv, "conversationId": conv,
                                               "event": event}, **extra)

        def update(conv: str, field: Any) -> Any:
            return request("cm.UpdateConversationField",
                           {"conversationId": conv, "conversationField": field})

        # 1: the examples' storyline, then what the consumer itself publishes, agent close, CSAT.
        conv1 = await new_conversation()
        await request("cm.ConsumerRequestConversation")  # 400: one open conversation only
        await request("ms.SubscribeMessagingEvents", {"dialogId": conv1, "fromSeq": 0})
        await sim.run_storyline(conv1, ending="open", delay_s=0.002)
        await request("ms.SubscribeMessagingEvents", {"dialogId": conv1, "fromSeq": 0})
        shot = [e["sequence"] for e in sim.stored_events(conv1)
                if e["event"].get("contentType") == "hosted/file"][-1]
        await request("ms.SubscribeMessagingEvents",
                      {"dialogId": conv1, "conversationId": conv1, "fromSeq": shot})
        await publish(conv1, {"type": "ContentEvent", "contentType": "text/plain", "message": "hi"})
        upload = await request("ms.GenerateURLForUploadFile", {"fileSize": "48213",
                                                              "fileType": "PNG"})
        path = sim.files.new_path(consumer, "PNG") if "body" not in upload \
            else upload["body"]["relativePath"]
        await publish(conv1, {"type": "ContentEvent", "contentType": "hosted/file", "message": {
            "caption": "Screenshot", "relativePath": path, "fileType": "PNG"}})
        await request("ms.GenerateURLForDownloadFile", {"relativePath": path})
        await publish(conv1, {"type": "RichContentEvent", "content": {
            "type": "vertical", "elements": [{"type": "text", "text": "my location"}]}},
            metadata=[{"type": "ExternalId", "id": "card-1"}])
        await publish(conv1, {"type": "ChatStateEvent", "chatState": "COMPOSING"})
        await wait_until(lambda: sim.stored_events(conv1)[-1]["originatorId"] != consumer)
        agent_seq = sim.stored_events(conv1)[-1]["sequence"]
        await publish(conv1, {"type": "AcceptStatusEvent", "status": "ACCEPT",
                              "sequenceList": [agent_seq]})
        await update(conv1, [{"field": "TTRField", "ttrType": "URGENT", "value": 300}])
        await asyncio.sleep(0.05)  # let the scripted agent finish its answers
        sim.close_conversation(conv1, by="AGENT", survey=False)
        await update(conv1, [{"field": "CSATRate", "csatRate": 4,
                              "csatResolutionConfirmation": True, "status": "FILLED"}])

        # 2: the consumer closes the MAIN dialog; survey question, answer, completion by the bot.
        conv2 = await new_conversation()
        sim.assign_agent(conv2)
        await update(conv2, {"field": "DialogChange", "type": "UPDATE", "dialog": {
            "dialogId": conv2, "state": "CLOSE", "closedCause": "Closed by consumer"}})
        survey = sim.conversation(conv2)["dialogs"][1]["dialogId"]
        question = sim.survey_question(survey)
        await request("ms.SubscribeMessagingEvents", {"dialogId": survey, "conversationId": conv2,
                                                      "fromSeq": 0})
        asked = [e for e in sim.stored_events(survey) if "quickReplies" in e["event"]]
        answer = asked[-1]["event"]["quickReplies"]["replies"][0]
        metadata = answer["click"]["metadata"]
        await request("ms.PublishEvent", {"dialogId": survey, "conversationId": conv2, "event": {
            "type": "AcceptStatusEvent", "status": "ACTION", "sequenceList": [question]}},
            metadata=metadata)
        await request("ms.PublishEvent", {"dialogId": survey, "conversationId": conv2, "event": {
            "type": "ContentEvent", "contentType": "text/plain", "message": "Yes"}},
            metadata=metadata)
        await wait_until(lambda: sim.conversation(conv2)["stage"] == "CLOSE")

        # 3: Stage CLOSE skips the survey. 4: state close, then the consumer closes the survey.
        conv3 = await new_conversation()
        await update(conv3, {"field": "Stage", "conversationState": "CLOSE"})
        conv4 = await new_conversation()
        await update(conv4, [{"field": "ConversationStateField", "conversationState": "CLOSE"}])
        survey4 = sim.conversation(conv4)["dialogs"][1]["dialogId"]
        await update(conv4, {"field": "DialogChange", "type": "UPDATE", "dialog": {
            "dialogId": survey4, "state": "CLOSE", "closedCause": "Closed by consumer"}})

        # 5: an open one, then a snapshot of all five; errors; unsubscribe.
        await new_conversation()
        snapshot = await request("cqm.SubscribeExConversations", everything)
        await request("cm.NoSuchRequest", {})
        sim.faults.reject_every = 1
        await request("GetClock")
        sim.faults.reject_every = None
        sim.faults.server_error_every = 1
        await request("GetClock")
        sim.faults.server_error_every = None
        subscription = snapshot.get("body", {}).get("subscriptionId", "")
        await request("cqm.UnsubscribeExConversations", {"subscriptionId": subscription})
        await c.settle(0.1)
        await c.close()
        return list(sim.journal)


@pytest.fixture(scope="module")
def plain_run() -> list[SentFrame]:
    return asyncio.run(scenario(Faults()))


@functools.cache
def variant_run(kind: str) -> list[SentFrame]:
    """The scenario with one shape variant applied to every frame it fits."""
    faults = Faults(shape_variants=True, variant_probability=1.0, variants=frozenset({kind}))
    return asyncio.run(scenario(faults))


@pytest.fixture(scope="module")
def noisy_run() -> list[SentFrame]:
    faults = Faults(unknown_event_probability=0.2, duplicate_probability=0.3,
                    malformed_probability=0.2, reorder_upserts=True, reorder_hold_s=0.02)
    return asyncio.run(scenario(faults))


# -- schema validation --------------------------------------------------------------------------

ROLE_ERROR = re.compile(
    r"^\$\.body\.changes\[\d+\]\.result\.conversationDetails\.participants\[\d+\]\.role: "
    r"'(READER|AGENT|CONTROLLER)' is not one of \['CONSUMER', 'ASSIGNED_AGENT', 'MANAGER'\]$"
)
CHANGE_REQUIRED = re.compile(r"^\$\.body\.changes\[(\d+)\]: '(sequence|serverTimestamp)' is a "
                             r"required property$")
EVENT_NONE_OF = re.compile(r"^\$\.body\.changes\[(\d+)\]\.event: matches none of oneOf "
                           r"\[.*\] \(its type is '(\w+)'\)$")


def event_type(frame: Frame, index: str) -> Any:
    return frame["body"]["changes"][int(index)]["event"].get("type")


def known_old_point(frame: Frame, error: str) -> str | None:
    """Which documented schema mistake (schemas/README.md) explains `error`, if any."""
    if ROLE_ERROR.match(error):
        # aam/subscribeExConversationsNotification.json line 36: role enum predates
        # READER, AGENT (survey bot) and CONTROLLER.
        return "participant role enum is older than the docs"
    if re.match(r"^\$\.body\.changes\[\d+\]\.event\.status: 'ACTION' is not one of", error):
        # ms/AcceptStatusEvent.json line 12: no ACTION (survey answers).
        return "AcceptStatusEvent status enum lacks ACTION"
    match = CHANGE_REQUIRED.match(error)
    if match and event_type(frame, match.group(1)) == "ChatStateEvent":
        # ms/messagingEventNotification.json requires both; live ChatStateEvents carry neither.
        return "ChatStateEvent change without sequence/serverTimestamp"
    match = EVENT_NONE_OF.match(error)
    if match and match.group(2) == "RichContentEvent" == event_type(frame, match.group(1)):
        # ms/AbstractMessagingEvent.json has no rich content branch.
        return "RichContentEvent is not in the schema"
    return None


VARIANT_POINTS = {
    # protocol.md §2.4: a one-element array may be sent as the bare element.
    "bare_change": re.compile(r"^\$\.body\.changes: is dict, schema wants type 'array'$"),
    # protocol.md §5.1: agent v2 raw payloads carry `participants` as a role map.
    "participants_map": re.compile(r"\.conversationDetails\.participants: is dict, schema wants"),
    # schemas/README.md: the Conversation Metadata tutorial shows only `participantsPId`.
    "participants_pid_only": re.compile(r"\.conversationDetails: 'participants' is a required"),
    # protocol.md §5.2: older payloads name the author only in `originatorPId`.
    "originator_pid": re.compile(r"^\$\.body\.changes\[\d+\]: 'originatorId' is a required"),
    # protocol.md §3.2: the PCS tutorial's `.ams.GenericSubscribeResponse` has no body.
    "response_alias": re.compile(r"^\$: 'body' is a required property$"),
}
#: Types that only variants produce and that no schema names (protocol.md §3.4 aliases).
VARIANT_NO_SCHEMA = {
    "notification_alias": {"aam.ExConversationChangeNotification",
                           ".ams.aam.ExConversationChangeNotification",
                           "ms.OnlineEventDistribution", ".ams.ms.OnlineEventDistribution"},
    "response_alias": {".ams.cm.RequestConversation$Response",
                       ".ams.aam.SubscribeExConversations$Response",
                       ".ams.ms.PublishEvent$Response", "ms.BaseGenerateURLResponse"},
}
#: The only frame type the simulator sends without a published schema.
NO_SCHEMA_TYPES = {".GetClock$Response"}


def explain(sent: SentFrame, error: str) -> str | None:
    reason = known_old_point(sent.frame, error)
    if reason:
        return reason
    for kind in sent.variants:
        if kind in VARIANT_POINTS and VARIANT_POINTS[kind].search(error):
            return f"variant {kind}"
    if sent.unknown and "(its type is 'FutureEvent')" in error:
        return "unknown event type (fault)"
    return None


def check(journal: list[SentFrame]) -> tuple[dict[str, int], set[str]]:
    validate = load_validator()
    reasons: dict[str, int] = {}
    no_schema: set[str] = set()
    for sent in journal:
        if sent.malformed:
            continue
        try:
            errors = validate.validate_frame(sent.frame)
        except validate.NoSchema:
            no_schema.add(sent.type or "")
            allowed = NO_SCHEMA_TYPES.union(*(VARIANT_NO_SCHEMA.get(k, set())
                                              for k in sent.variants))
            assert sent.type in allowed, f"no schema for {sent.type}: {sent.text[:300]}"
            continue
        for error in errors:
            reason = explain(sent, error)
            assert reason, f"unexplained schema failure {error!r} in {sent.text[:400]}"
            reasons[reason] = reasons.get(reason, 0) + 1
    return reasons, no_schema


def test_every_frame_validates_except_the_known_old_points(plain_run: list[SentFrame]) -> None:
    reasons, no_schema = check(plain_run)
    assert no_schema == NO_SCHEMA_TYPES
    assert set(reasons) == {
        "participant role enum is older than the docs",
        "AcceptStatusEvent status enum lacks ACTION",
        "ChatStateEvent change without sequence/serverTimestamp",
        "RichContentEvent is not in the schema",
    }
    types = {s.type for s in plain_run}
    assert types >= {
        ".ReqBody$StringResp", "StringResponse", ".GetClock$Response",
        "cm.RequestConversationResponse", "cqm.SubscribeExConversationsResponse",
        "GenericSubscribeResponse", "ms.PublishEventResponse", "ms.GenerateURLResponse",
        "cqm.ExConversationChangeNotification", "ms.MessagingEventNotification",
    }
    codes = {s.frame["code"] for s in plain_run if s.kind == "resp"}
    assert codes == {200, 400, 401, 429, 503}
    assert not any(s.variant or s.duplicate or s.malformed or s.unknown for s in plain_run)


def test_fault_frames_validate_like_the_others(noisy_run: list[SentFrame]) -> None:
    reasons, no_schema = check(noisy_run)
    assert no_schema == NO_SCHEMA_TYPES and "unknown event type (fault)" in reasons
    flags = {flag for s in noisy_run for flag in ("duplicate", "malformed", "unknown", "reordered")
             if getattr(s, flag)}
    assert flags == {"duplicate", "malformed", "unknown", "reordered"}


@pytest.mark.parametrize("kind", VARIANT_KINDS)
def test_variant_frames_fail_only_where_the_variant_says(kind: str) -> None:
    journal = variant_run(kind)
    reasons, no_schema = check(journal)
    variants = [s for s in journal if s.variant]
    assert variants and all(s.variants == (kind,) for s in variants)
    if kind in VARIANT_POINTS:
        assert f"variant {kind}" in reasons
    if kind in VARIANT_NO_SCHEMA:
        assert no_schema & VARIANT_NO_SCHEMA[kind]
    if kind == "rich_content_string":
        rich = [c for s in variants for c in changes_of(s.frame)
                if c["event"]["type"] == "RichContentEvent"]
        assert rich and all(isinstance(c["event"]["content"], str) for c in rich)


# -- shapes of the examples ---------------------------------------------------------------------


def is_ex(f: Frame) -> bool:
    return f.get("type") == "cqm.ExConversationChangeNotification"


def is_ms(f: Frame) -> bool:
    return f.get("type") == "ms.MessagingEventNotification"


def one_change(f: Frame, ex: bool) -> Frame | None:
    good = is_ex(f) if ex else is_ms(f)
    return f["body"]["changes"][0] if good and len(f["body"]["changes"]) == 1 else None


def upsert(f: Frame, test: Callable[[Frame], bool]) -> bool:
    change = one_change(f, ex=True)
    return bool(change and change["type"] == "UPSERT"
                and test(change["result"]["conversationDetails"]))


def roles(d: Frame) -> set[str]:
    return {p["role"] for p in d["participants"]} if isinstance(d.get("participants"), list) \
        else set()


def event(f: Frame, etype: str, role: str, **fields: Any) -> bool:
    change = one_change(f, ex=False)
    return bool(change and change["event"]["type"] == etype
                and change["originatorMetadata"]["role"] == role
                and all(change["event"].get(k) == v for k, v in fields.items()))


def trimmed(f: Frame, changes: list[Frame]) -> Frame:
    return {**f, "body": {**f["body"], "changes": changes}}


def batch(f: Frame, size: int, test: Callable[[list[Frame]], bool]) -> Frame | None:
    changes = f["body"]["changes"] if is_ms(f) else []
    return trimmed(f, changes[:size]) if len(changes) >= size and test(changes) else None


def snapshot_pair(f: Frame) -> Frame | None:
    changes = f["body"]["changes"] if is_ex(f) else []
    closed = [c for c in changes if "csat" in c["result"]["conversationDetails"]]
    opened = [c for c in changes if c["result"]["conversationDetails"]["state"] == "OPEN"]
    return trimmed(f, [closed[0], opened[0]]) if closed and opened else None


def kinds(changes: list[Frame]) -> list[str]:
    return [c["event"]["type"] + "/" + str(c["event"].get("status", "")) for c in changes]


def keep(test: Callable[[Frame], bool]) -> Callable[[Frame], Frame | None]:
    return lambda f: f if test(f) else None


def resp(code: int, type_: str | None = None) -> Callable[[Frame], Frame | None]:
    return keep(lambda f: f.get("kind") == "resp" and f["code"] == code
                and type_ in (None, f["type"]))


SELECTORS: dict[str, Callable[[Frame], Frame | None]] = {
    "notif_exconv_initial_empty.json": keep(lambda f: is_ex(f) and f["body"]["changes"] == []),
    "notif_exconv_upsert_open.json": keep(lambda f: upsert(
        f, lambda d: roles(d) == {"CONSUMER"} and "conversationHandlerDetails" not in d)),
    "notif_exconv_upsert_agent_joined.json": keep(lambda f: upsert(
        f, lambda d: d["state"] == "OPEN" and roles(d) == {"CONSUMER", "ASSIGNED_AGENT"})),
    "notif_exconv_upsert_transfer_to_skill.json": keep(lambda f: upsert(
        f, lambda d: d["state"] == "OPEN" and roles(d) == {"CONSUMER", "READER"})),
    "notif_exconv_upsert_transfer_suggested_agent.json": keep(lambda f: upsert(
        f, lambda d: any(p["state"] == "SUGGESTED"
                         for p in d["dialogs"][0]["participantsDetails"]))),
    "notif_exconv_upsert_closed_with_csat.json": keep(lambda f: upsert(
        f, lambda d: d["stage"] == "CLOSE" and "csat" in d and len(d["dialogs"]) == 1)),
    "notif_exconv_upsert_main_closed_post_survey_open.json": keep(lambda f: upsert(
        f, lambda d: (d["state"], d["stage"], len(d["dialogs"])) == ("CLOSE", "OPEN", 2))),
    "notif_exconv_upsert_survey_completed_stage_close.json": keep(lambda f: upsert(
        f, lambda d: d["stage"] == "CLOSE" and len(d["dialogs"]) == 2
        and d["dialogs"][1].get("closedCause") == "Completed")),
    "notif_exconv_delete.json": keep(lambda f: bool(
        (c := one_change(f, ex=True)) and c["type"] == "DELETE")),
    "notif_exconv_multi_change_batch.json": snapshot_pair,
    "notif_exconv_upsert_legacy_participants_map.json": keep(lambda f: upsert(
        f, lambda d: "participantsPId" in d and "participants" not in d)),
    "notif_msg_backfill_batch.json": lambda f: batch(f, 4, lambda cs: cs[0]["sequence"] == 0
        and kinds(cs[:4]) == ["ContentEvent/", "AcceptStatusEvent/READ", "ContentEvent/",
                              "AcceptStatusEvent/ACCEPT"]),
    "notif_msg_content_text_from_agent.json": keep(lambda f: event(
        f, "ContentEvent", "ASSIGNED_AGENT", contentType="text/plain")),
    "notif_msg_content_text_from_consumer_echo.json": keep(lambda f: event(
        f, "ContentEvent", "CONSUMER", contentType="text/plain")),
    "notif_msg_rich_content_from_agent.json": keep(lambda f: event(
        f, "RichContentEvent", "ASSIGNED_AGENT")),
    "notif_msg_accept_status_accept_from_consumer.json": keep(lambda f: event(
        f, "AcceptStatusEvent", "CONSUMER", status="ACCEPT")),
    "notif_msg_accept_status_read_from_agent.json": keep(lambda f: event(
        f, "AcceptStatusEvent", "ASSIGNED_AGENT", status="READ")),
    "notif_msg_chat_state_composing_agent.json": keep(lambda f: event(
        f, "ChatStateEvent", "ASSIGNED_AGENT", chatState="COMPOSING")),
    "notif_msg_chat_state_active_consumer.json": keep(lambda f: event(
        f, "ChatStateEvent", "CONSUMER", chatState="ACTIVE")),
    "notif_msg_hosted_file_from_consumer.json": keep(lambda f: event(
        f, "ContentEvent", "CONSUMER", contentType="hosted/file")),
    "notif_msg_post_survey_question.json": lambda f: batch(
        f, 2, lambda cs: "quickReplies" in cs[1]["event"]),
    "notif_msg_post_survey_action_echo.json": keep(lambda f: event(
        f, "AcceptStatusEvent", "CONSUMER", status="ACTION")),
    "notif_msg_resume_after_reconnect.json": lambda f: batch(
        f, 3, lambda cs: cs[0]["sequence"] > 0 and cs[0]["event"].get("contentType")
        == "hosted/file"),
    "resp_error_400_bad_request.json": resp(400),
    "resp_error_401_unauthorized.json": resp(401),
    "resp_error_429_rate_limited.json": resp(429),
    "resp_error_503_unavailable.json": resp(503),
    "resp_generate_upload_url_ok.json": resp(200, "ms.GenerateURLResponse"),
    "resp_get_clock.json": resp(200, ".GetClock$Response"),
    "resp_init_connection_ok.json": keep(lambda f: f.get("kind") == "resp"
                                         and f["code"] == 200 and f["body"] == "OK"),
    "resp_publish_event_ok.json": resp(200, "ms.PublishEventResponse"),
    "resp_request_conversation_ok.json": resp(200, "cm.RequestConversationResponse"),
    "resp_subscribe_ex_conversations_ok.json": resp(200, "cqm.SubscribeExConversationsResponse"),
    "resp_subscribe_messaging_events_ok.json": resp(200, "GenericSubscribeResponse"),
    "resp_unsubscribe_ex_conversations_ok.json": keep(
        lambda f: f.get("kind") == "resp" and f["body"] == "OK Subscription removed"),
    "resp_update_conversation_ok.json": resp(200, "StringResponse"),
}
#: Examples the simulator never sends to a consumer, and why.
NOT_SENT = {
    # The agents' (webhook) view of a private message; consumers never receive it, which is
    # one reason for the sequence gaps the simulator does produce.
    "notif_msg_private_agent_message_audience.json",
}
#: Example in the variant run only (the older tutorial's payload is a shape variant).
FROM_VARIANTS = {"notif_exconv_upsert_legacy_participants_map.json"}

DETAILS = "body.changes[].result.conversationDetails"
#: Key paths the simulator may add to an example's structure (prefixes), and why.
EXTRA_OK = (
    f"{DETAILS}.conversationHandlerDetails",  # once an agent or a transfer handled it
    "body.changes[].originatorMetadata.clientProperties",  # author's client properties, as in
    "body.changes[].originatorClientProperties",  # notif_msg_content_text_from_agent.json
    "body.changes[].metadata",  # ExternalId on rich content, Question/Answer on surveys
)
EXTRA_PER_EXAMPLE = {
    # A DELETE carries the full current details, like an UPSERT (the schema requires them).
    "notif_exconv_delete.json": (f"{DETAILS}.dialogs", f"{DETAILS}.stage",
                                 "body.changes[].result.effectiveTTR"),
    # The variant keeps every modern field next to participantsPId; only `participants` goes.
    "notif_exconv_upsert_legacy_participants_map.json": (DETAILS,
                                                         "body.changes[].result.effectiveTTR"),
}
#: Key paths of an example the simulator may lack, and why.
MISSING_OK = {
    # Off-hours `delay` is not simulated.
    "notif_exconv_multi_change_batch.json": (f"{DETAILS}.delay",),
}


def covered(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith((p + ".", p + "[]")) for p in prefixes)


def difference(example: Frame, frame: Frame, name: str) -> tuple[set[str], set[str]]:
    want, have = key_paths(example), key_paths(frame)
    missing = {p for p in want - have if not covered(p, MISSING_OK.get(name, ()))}
    extra = {p for p in have - want
             if not covered(p, EXTRA_OK + EXTRA_PER_EXAMPLE.get(name, ()))}
    return missing, extra


def test_every_example_is_paired_or_explained() -> None:
    names = set(example_names("notif_") + example_names("resp_"))
    assert names == set(SELECTORS) | NOT_SENT


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_frames_have_the_key_structure_of_the_examples(
    name: str, plain_run: list[SentFrame]
) -> None:
    example = example_json(name)
    journal = variant_run("participants_pid_only") if name in FROM_VARIANTS else plain_run
    candidates = []
    for sent in journal:
        if isinstance(sent.frame, dict) and (name in FROM_VARIANTS or not sent.variant):
            picked = _select(name, sent.frame)
            if picked is not None:
                candidates.append(picked)
    assert candidates, f"the simulator sent no frame like {name}"
    results = [difference(example, frame, name) for frame in candidates]
    best = min(results, key=lambda r: len(r[0]) + len(r[1]))
    assert best == (set(), set()), f"{name}: missing {sorted(best[0])}, extra {sorted(best[1])}"


def _select(name: str, frame: Frame) -> Frame | None:
    try:
        return SELECTORS[name](frame)
    except (KeyError, TypeError, IndexError, AttributeError):
        return None  # a frame of another shape (e.g. a variant) is simply not a candidate
