"""Consumer requests over the websocket (protocol.md §4) and their answers (§3.2, §8.2).

A request for a conversation or dialog the consumer does not own (or, for POST_SURVEY dialogs,
cannot see without MULTI_DIALOG) is answered 400 with a string body: the docs give no
websocket error for it (UNCONFIRMED), and 400 is what LivePerson documents for bad requests.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from recorder.logs import event
from recorder.simulator import wire
from recorder.simulator.checks import (
    BadRequest,
    check_event,
    check_field,
    check_upload,
    counter,
    state_filter,
)
from recorder.simulator.connection import Connection, ExSubscription
from recorder.simulator.interface import SimulatorInterface
from recorder.simulator.journal import ReceivedFrame
from recorder.simulator.model import (
    CONSUMER,
    MAIN,
    OPEN,
    TTR_DEFAULTS,
    Conversation,
    Dialog,
    Json,
    SimulatorError,
)
from recorder.simulator.tokens import TokenError

log = logging.getLogger(__name__)

Handler = Callable[[SimulatorInterface, Connection, str, Json, Json], None]

async def handle_text(sim: SimulatorInterface, conn: Connection, text: str) -> None:
    """One text frame from the client; garbage is logged and ignored, never answered."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        frame = None
    if sim.keep_journal:
        sim.received.append(ReceivedFrame(conn.id, conn.consumer, time.monotonic(), text, frame))
    if not isinstance(frame, dict):
        log.warning("connection %s: ignoring a frame that is not a JSON object", conn.id,
                    extra=event("simulator.frame.not_object"))
        return
    req_id = frame.get("id")
    if frame.get("kind", "req") != "req" or isinstance(req_id, bool) or req_id in (None, ""):
        log.warning("connection %s: ignoring a frame that is not a request with an id", conn.id,
                    extra=event("simulator.frame.not_request"))
        return
    if not isinstance(req_id, str | int):
        log.warning("connection %s: ignoring a request whose id is %r", conn.id, req_id,
                    extra=event("simulator.frame.bad_id"))
        return
    delay = sim.faults.response_delay_ms
    if delay > 0:
        conn.spawn(_delayed(sim, conn, str(req_id), frame, delay / 1000))
    else:
        dispatch(sim, conn, str(req_id), frame)


async def _delayed(
    sim: SimulatorInterface, conn: Connection, req_id: str, frame: Json, delay: float
) -> None:
    await asyncio.sleep(delay)
    dispatch(sim, conn, req_id, frame)


def dispatch(sim: SimulatorInterface, conn: Connection, req_id: str, frame: Json) -> None:
    """Answer one request; every frame it causes is queued before this returns."""
    if conn.closed:
        return
    rtype = frame.get("type")
    if not isinstance(rtype, str):
        conn.send(wire.string_response(req_id, 400, "Bad request: missing type"))
        return
    if rtype == "InitConnection":
        _init_connection(sim, conn, req_id, frame)
        return
    if conn.identity is None:
        conn.send(wire.string_response(req_id, 401, "Unauthorized: send InitConnection first"))
        return
    if rtype == "GetClock" and sim.faults.no_clock:
        return
    throttled = _throttle(sim)
    if throttled is not None:
        conn.send(wire.string_response(req_id, *throttled))
        return
    handler = HANDLERS.get(rtype)
    body = frame.get("body", {})
    try:
        if handler is None:
            raise BadRequest(f"Bad request: unknown request type {rtype}")
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise BadRequest("Bad request: body must be an object")
        handler(sim, conn, req_id, body, frame)
    except BadRequest as exc:
        conn.send(wire.string_response(req_id, exc.code, str(exc)))
    except SimulatorError as exc:
        conn.send(wire.string_response(req_id, 400, f"Bad request: {exc}"))


def _throttle(sim: SimulatorInterface) -> tuple[int, str] | None:
    sim.request_count += 1
    n, faults = sim.request_count, sim.faults
    if faults.reject_every and n % faults.reject_every == 0:
        return 429, "Too many requests"
    if faults.server_error_every and n % faults.server_error_every == 0:
        return 503, "Service unavailable, please retry"
    return None


# -- connection ------------------------------------------------------------------------------------


def _init_connection(sim: SimulatorInterface, conn: Connection, req_id: str, frame: Json) -> None:
    headers = frame.get("headers", [])
    if isinstance(headers, dict):
        headers = [headers]
    if not isinstance(headers, list):
        conn.send(wire.string_response(req_id, 400, "Bad request: headers must be an array"))
        return
    token = None
    for header in headers:
        kind = header.get("type", "") if isinstance(header, dict) else ""
        if kind.endswith("ClientProperties"):
            conn.set_client_properties(header)
        elif kind.endswith("ConsumerAuthentication") and isinstance(header.get("jwt"), str):
            token = header["jwt"]
    if token is None:
        if conn.identity is None:
            conn.send(wire.string_response(req_id, 401, "Unauthorized: no ConsumerAuthentication"))
        else:
            conn.send(wire.string_response(req_id, 200, "OK"))
        return
    try:
        identity = sim.tokens.verify(token)
    except TokenError as exc:
        conn.send(wire.string_response(req_id, 401, f"Unauthorized: {exc}"))
        conn.spawn(conn.close(exc.close_code, str(exc)))
        return
    if conn.identity is not None and conn.identity.sub != identity.sub:
        # Whether a socket may change identity is UNCONFIRMED; we refuse it.
        conn.send(wire.string_response(req_id, 400, "Bad request: identity cannot change"))
        return
    conn.authenticate(identity)
    conn.send(wire.string_response(req_id, 200, "OK"))


def _get_clock(
    sim: SimulatorInterface, conn: Connection, req_id: str, body: Json, frame: Json
) -> None:
    clock = {"currentTime": sim.clock.peek_ms()}
    conn.send(wire.response(req_id, 200, wire.CLOCK_RESP, clock))


def _keep_alive(
    sim: SimulatorInterface, conn: Connection, req_id: str, body: Json, frame: Json
) -> None:
    conn.send(wire.string_response(req_id, 200, "OK"))


# -- conversations ---------------------------------------------------------------------------------


def _request_conversation(
    sim: SimulatorInterface, conn: Connection, req_id: str, body: Json, frame: Json
) -> None:
    consumer = _consumer(conn)
    if body.get("brandId") not in (None, sim.account):
        raise BadRequest("Bad request: brandId does not match the account")
    if body.get("channelType") not in (None, "MESSAGING"):
        raise BadRequest("Bad request: channelType must be MESSAGING")
    skill = body.get("skillId")
    skill_id = sim.default_skill if skill in (None, "", "-1", -1) else str(skill)
    ttr = body.get("ttrDefName") or "NORMAL"
    if ttr not in TTR_DEFAULTS:
        raise BadRequest(f"Bad request: unknown ttrDefName {ttr}")
    if sim.world.open_conversation(consumer) is not None:
        raise BadRequest("Bad request: the consumer already has an open conversation")
    conv = sim.world.create_conversation(
        consumer, skill_id, ttr_type=ttr, ttr_value=TTR_DEFAULTS[ttr]
    )
    body_out = {"conversationId": conv.conv_id}
    conn.send(wire.response(req_id, 200, wire.REQUEST_CONVERSATION_RESP, body_out))


def _update_conversation(
    sim: SimulatorInterface, conn: Connection, req_id: str, body: Json, frame: Json
) -> None:
    conv = _owned_conversation(sim, conn, body.get("conversationId"))
    fields = body.get("conversationField")
    if isinstance(fields, dict):
        fields = [fields]  # one object or an array, both documented (§4.4)
    if not isinstance(fields, list) or not fields or not all(isinstance(f, dict) for f in fields):
        raise BadRequest("Bad request: conversationField is required")
    for field in fields:
        check_field(field)
    closing = False
    for field in fields:
        closing |= _apply_field(sim, conn, conv, field)
    text = "OK Conversation resolved successfully" if closing else "OK"
    conn.send(wire.string_response(req_id, 200, text, wire.STRING_RESPONSE))


def _apply_field(
    sim: SimulatorInterface, conn: Connection, conv: Conversation, field: Json
) -> bool:
    name = field["field"]
    if name == "ConversationStateField":
        if conv.state != OPEN:
            raise BadRequest("Bad request: the conversation is already closed")
        sim.close_conversation(conv.conv_id, by=CONSUMER)
        return True
    if name == "Stage":
        sim.world.close_stage(conv, CONSUMER)
        return True
    if name == "CSATRate":
        csat = {k: field[k] for k in ("csatRate", "csatResolutionConfirmation", "status")}
        sim.world.set_csat(conv, csat)
        return False
    if name == "TTRField":
        sim.world.set_ttr(conv, field["ttrType"], field["value"])
        return False
    change = field["dialog"]
    dialog = _visible_dialog(sim, conn, change["dialogId"])
    if dialog.conversation_id != conv.conv_id or not dialog.is_open:
        raise BadRequest("Invalid conversationField: unknown or closed dialogId")
    cause = change.get("closedCause") if isinstance(change.get("closedCause"), str) else None
    if dialog.dialog_type == MAIN:
        sim.close_conversation(conv.conv_id, by=CONSUMER, cause=cause)
    else:
        sim.world.close_dialog(dialog, CONSUMER, cause)
    return True


def _subscribe_ex(
    sim: SimulatorInterface, conn: Connection, req_id: str, body: Json, frame: Json
) -> None:
    states = state_filter(body.get("convState"), "convState")
    stages = state_filter(body.get("stage"), "stage")
    min_ts = counter(body.get("minLastUpdatedTime", 0), "minLastUpdatedTime")
    subscription = ExSubscription(sim.new_subscription_id(), states, stages, min_ts)
    conn.ex_subscriptions[subscription.subscription_id] = subscription
    answer = {"subscriptionId": subscription.subscription_id}
    conn.send(wire.response(req_id, 200, wire.SUBSCRIBE_EX_RESP, answer))
    changes = []
    for conv_id in sim.world.by_consumer.get(_consumer(conn), []):
        conv = sim.world.conversations[conv_id]
        if conv_id in sim.faults.hidden_conversations:
            continue  # never reported on the socket: only the history lists it
        if conv.matches(states, stages, min_ts):
            changes.append({"type": "UPSERT", "result": conv.result(conn.multi_dialog)})
            subscription.visible.add(conv_id)
    conn.send(wire.ex_conversation_notification(subscription.subscription_id, changes))


def _unsubscribe_ex(
    sim: SimulatorInterface, conn: Connection, req_id: str, body: Json, frame: Json
) -> None:
    if conn.ex_subscriptions.pop(str(body.get("subscriptionId")), None) is None:
        raise BadRequest("Bad request: unknown subscriptionId")
    conn.send(wire.string_response(req_id, 200, "OK Subscription removed"))


# -- messaging -------------------------------------------------------------------------------------


def _subscribe_messaging(
    sim: SimulatorInterface, conn: Connection, req_id: str, body: Json, frame: Json
) -> None:
    dialog = _visible_dialog(sim, conn, body.get("dialogId"))
    if body.get("conversationId") not in (None, dialog.conversation_id):
        raise BadRequest("Bad request: dialogId does not belong to conversationId")
    from_seq = counter(body.get("fromSeq", 0), "fromSeq")
    conn.send(wire.response(req_id, 200, wire.GENERIC_SUBSCRIBE_RESP, {}))
    # Replay (fromSeq inclusive, withheld events skipped), then live: both queued in order
    # before anything else.
    for batch in wire.batches(dialog.deliverable_from(from_seq)):
        conn.send(wire.messaging_notification(batch))
    conn.dialog_subscriptions.add(dialog.dialog_id)


def _publish(
    sim: SimulatorInterface, conn: Connection, req_id: str, body: Json, frame: Json
) -> None:
    dialog = _visible_dialog(sim, conn, body.get("dialogId"))
    if body.get("conversationId") not in (None, dialog.conversation_id):
        raise BadRequest("Bad request: dialogId does not belong to conversationId")
    event = body.get("event")
    check_event(event)
    assert isinstance(event, dict)
    if not dialog.is_open:
        raise BadRequest("Bad request: the dialog is closed")
    metadata = frame.get("metadata")
    if isinstance(metadata, dict):
        metadata = [metadata]
    consumer = _consumer(conn)
    if event["type"] == "ChatStateEvent":
        change = sim.world.chat_state(
            dialog, consumer, CONSUMER, event["chatState"],
            client_properties=conn.client_properties,
        )
        sequence = 0  # not a position: the docs show 0 for a ChatStateEvent publish
    else:
        change = sim.world.append(
            dialog, consumer, CONSUMER, copy.deepcopy(event),
            metadata=metadata if isinstance(metadata, list) else None,
            client_properties=conn.client_properties,
        )
        sequence = change["sequence"]
    conn.send(wire.response(req_id, 200, wire.PUBLISH_RESP, {"sequence": sequence}))
    sim.script.consumer_published(dialog, change)


def _generate_upload(
    sim: SimulatorInterface, conn: Connection, req_id: str, body: Json, frame: Json
) -> None:
    path = sim.files.new_path(_consumer(conn), check_upload(body))
    conn.send(wire.response(req_id, 200, wire.GENERATE_URL_RESP, sim.files.signed(path)))


def _generate_download(
    sim: SimulatorInterface, conn: Connection, req_id: str, body: Json, frame: Json
) -> None:
    path = body.get("relativePath")
    if not isinstance(path, str) or not path.startswith("/"):
        raise BadRequest("Bad request: relativePath is required")
    conn.send(wire.response(req_id, 200, wire.GENERATE_URL_RESP, sim.files.signed(path)))


# -- helpers ---------------------------------------------------------------------------------------


def _consumer(conn: Connection) -> str:
    assert conn.consumer is not None  # dispatch() answers 401 before any handler runs
    return conn.consumer


def _owned_conversation(sim: SimulatorInterface, conn: Connection, conv_id: Any) -> Conversation:
    conv = sim.world.conversations.get(conv_id) if isinstance(conv_id, str) else None
    if conv is None or conv.consumer != conn.consumer:
        raise BadRequest(f"Bad request: unknown conversation {conv_id}")
    return conv


def _visible_dialog(sim: SimulatorInterface, conn: Connection, dialog_id: Any) -> Dialog:
    dialog = sim.world.dialogs.get(dialog_id) if isinstance(dialog_id, str) else None
    if dialog is not None:
        owner = sim.world.conversations[dialog.conversation_id].consumer
        if owner == conn.consumer and (dialog.dialog_type == MAIN or conn.multi_dialog):
            return dialog
    raise BadRequest(f"Bad request: unknown dialog {dialog_id}")


HANDLERS: dict[str, Handler] = {
    "GetClock": _get_clock,
    "KeepAlive": _keep_alive,
    "cm.ConsumerRequestConversation": _request_conversation,
    "cm.UpdateConversationField": _update_conversation,
    "cqm.SubscribeExConversations": _subscribe_ex,
    "cqm.UnsubscribeExConversations": _unsubscribe_ex,
    "ms.SubscribeMessagingEvents": _subscribe_messaging,
    "ms.PublishEvent": _publish,
    "ms.GenerateURLForUploadFile": _generate_upload,
    "ms.GenerateURLForDownloadFile": _generate_download,
}
