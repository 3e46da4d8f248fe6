"""Frame envelopes and the type strings the simulator answers with (protocol.md §3)."""

from __future__ import annotations

from typing import Any

from recorder.simulator.model import Json

STRING_RESP = ".ReqBody$StringResp"
STRING_RESPONSE = "StringResponse"  # the PCS tutorial's spelling, used for UpdateConversationField
CLOCK_RESP = ".GetClock$Response"
REQUEST_CONVERSATION_RESP = "cm.RequestConversationResponse"
SUBSCRIBE_EX_RESP = "cqm.SubscribeExConversationsResponse"
GENERIC_SUBSCRIBE_RESP = "GenericSubscribeResponse"
PUBLISH_RESP = "ms.PublishEventResponse"
GENERATE_URL_RESP = "ms.GenerateURLResponse"

EX_CONVERSATION_NOTIFICATION = "cqm.ExConversationChangeNotification"
MESSAGING_NOTIFICATION = "ms.MessagingEventNotification"

#: Replayed events are sent in notifications of at most this many changes.
REPLAY_BATCH = 50


def response(req_id: str, code: int, type_: str, body: Any) -> Json:
    return {"kind": "resp", "reqId": req_id, "code": code, "type": type_, "body": body}


def string_response(req_id: str, code: int, text: str, type_: str = STRING_RESP) -> Json:
    # Error bodies are short strings (StringResp allows <= 128 characters).
    return response(req_id, code, type_, text[:128])


def ex_conversation_notification(subscription_id: str, changes: list[Json]) -> Json:
    return {
        "kind": "notification",
        "type": EX_CONVERSATION_NOTIFICATION,
        "body": {"subscriptionId": subscription_id, "changes": changes},
    }


def messaging_notification(changes: list[Json]) -> Json:
    return {"kind": "notification", "type": MESSAGING_NOTIFICATION, "body": {"changes": changes}}


def batches(changes: list[Json], size: int = REPLAY_BATCH) -> list[list[Json]]:
    return [changes[i : i + size] for i in range(0, len(changes), size)]
