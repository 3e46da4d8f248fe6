"""Frames of the consumer UMS websocket: parsing, normalising, building requests.

§ references are to shared/protocol/protocol.md. Nothing is dropped: frames keep their raw text
and decoded object; unknown fields, types and enum values pass through verbatim (§2.4).

Decisions where the protocol leaves room:
* No usable `kind` (§3.1: some examples omit it): `reqId` → response; else `id` and a string
  `type` → request; else a type named *Notification/*Distribution → notification; else
  MalformedFrame. `kind: "req"` → Request (for the simulator); other kinds → Unknown.
* A response needs a `reqId` (a number counts as its text, §3.1) and a `code` (int or numeric
  string). No code is MalformedFrame, not a guessed 200 that could turn a failed publish into a
  delivered one (§8.2); its `req_id` lets the caller fail the request at once. A missing
  response `type` is "" (correlate by reqId, §3.2); a notification needs a `type`.
* Items of `changes` that are not JSON objects are left out of `changes` (they stay in `raw`).
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Iterable
from typing import Any, TypeAlias

import orjson

from recorder import __version__
from recorder.errors import RecorderError
from recorder.ums.payload import as_int, as_list, id_text, text_or_empty

# Request types the consumer client sends (§4).
INIT_CONNECTION = "InitConnection"
GET_CLOCK = "GetClock"
SUBSCRIBE_EX_CONVERSATIONS = "cqm.SubscribeExConversations"
UNSUBSCRIBE_EX_CONVERSATIONS = "cqm.UnsubscribeExConversations"
SUBSCRIBE_MESSAGING_EVENTS = "ms.SubscribeMessagingEvents"
PUBLISH_EVENT = "ms.PublishEvent"
CONSUMER_REQUEST_CONVERSATION = "cm.ConsumerRequestConversation"
UPDATE_CONVERSATION_FIELD = "cm.UpdateConversationField"
GENERATE_UPLOAD_URL = "ms.GenerateURLForUploadFile"
GENERATE_DOWNLOAD_URL = "ms.GenerateURLForDownloadFile"
REQUEST_TYPES = (
    INIT_CONNECTION, GET_CLOCK, SUBSCRIBE_EX_CONVERSATIONS, UNSUBSCRIBE_EX_CONVERSATIONS,
    SUBSCRIBE_MESSAGING_EVENTS, PUBLISH_EVENT, CONSUMER_REQUEST_CONVERSATION,
    UPDATE_CONVERSATION_FIELD, GENERATE_UPLOAD_URL, GENERATE_DOWNLOAD_URL,
)
MAX_REQUEST_ID_LENGTH = 64  # §3.1

# Logical notification names: the type string's suffix, whatever its prefix (§3.4).
EX_CONVERSATION_CHANGE = "ExConversationChangeNotification"
MESSAGING_EVENT = "MessagingEventNotification"
ONLINE_EVENT_DISTRIBUTION = "OnlineEventDistribution"

# Survey dialogs, rich content and quick replies reach only clients that declare them (§2.3).
DEFAULT_FEATURES = ("RICH_CONTENT", "QUICK_REPLIES", "MULTI_DIALOG", "FILE_SHARING",
                    "PHOTO_SHARING")
_OS_NAMES = {"Linux": "LINUX", "Darwin": "OSX", "Windows": "WINDOWS"}
_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", int: "a number",
               float: "a number", bool: "a boolean", type(None): "null"}  # what orjson returns


class MalformedFrame(RecorderError):
    """Input that is not a usable frame. `raw` is the input exactly as received (str or bytes)."""

    def __init__(self, raw: str | bytes, reason: str, data: dict[str, Any] | None = None) -> None:
        self.raw = raw
        self.reason = reason
        self.data = data  # the decoded object, when the input was at least a JSON object
        super().__init__(f"malformed frame: {reason}")

    @property
    def raw_bytes(self) -> bytes:
        """The input as bytes, for quarantine storage."""
        raw = self.raw
        return raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")

    @property
    def req_id(self) -> str | None:
        """The `reqId` of an unusable response, so its pending request can fail at once."""
        return id_text(self.data.get("reqId")) if self.data is not None else None


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    req_id: str
    code: int
    type: str
    body: Any  # object, string or None (absent), §3.2
    raw: str = dataclasses.field(repr=False)
    data: dict[str, Any] = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Notification:
    type: str
    name: str  # logical_type(type)
    body: Any
    changes: tuple[dict[str, Any], ...]
    subscription_id: str | None
    raw: str = dataclasses.field(repr=False)
    data: dict[str, Any] = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Request:  # a client request (kind "req"); its metadata and headers are in `data`
    req_id: str
    type: str
    body: Any
    raw: str = dataclasses.field(repr=False)
    data: dict[str, Any] = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Unknown:  # a JSON object of a kind this client does not know: kept, not an error
    kind: str
    raw: str = dataclasses.field(repr=False)
    data: dict[str, Any] = dataclasses.field(repr=False)


Frame: TypeAlias = Response | Notification | Request | Unknown


def parse_frame(raw: str | bytes) -> Frame:
    """Parse one websocket message; raise MalformedFrame if it is not a usable frame."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise MalformedFrame(raw, f"not UTF-8 (bad byte at offset {exc.start})") from exc
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise MalformedFrame(raw, f"not JSON ({exc.msg} at char {exc.pos})") from exc
    if not isinstance(data, dict):
        raise MalformedFrame(raw, f"JSON is {_JSON_NAMES[type(data)]}, not an object")
    kind, frame_type = _kind(data), data.get("type")
    if kind is None:
        why = f"kind is {_JSON_NAMES[type(data['kind'])]}" if "kind" in data else "no kind"
        raise MalformedFrame(raw, f"{why}, and no reqId, id or notification type to infer it", data)
    if kind == "resp":
        req_id, code = id_text(data.get("reqId")), as_int(data.get("code"))
        if req_id is None or code is None:
            missing = "reqId" if req_id is None else "code"
            raise MalformedFrame(raw, f"response without a usable {missing}", data)
        return Response(req_id, code, text_or_empty(frame_type), data.get("body"), text, data)
    if kind == "req":
        if (req_id := id_text(data.get("id"))) is None:
            raise MalformedFrame(raw, "request without a usable id", data)
        return Request(req_id, text_or_empty(frame_type), data.get("body"), text, data)
    if kind != "notification":
        return Unknown(kind, text, data)
    if not isinstance(frame_type, str) or not frame_type:
        raise MalformedFrame(raw, "notification without a type", data)
    name, body = logical_type(frame_type), data.get("body")
    if name == ONLINE_EVENT_DISTRIBUTION and not (isinstance(body, dict) and "changes" in body):
        items = as_list(body)  # the legacy implicit stream's body is the change itself (§3.4)
    else:
        items = as_list(body.get("changes")) if isinstance(body, dict) else []
    changes = tuple(item for item in items if isinstance(item, dict))
    subscription_id = id_text(body.get("subscriptionId")) if isinstance(body, dict) else None
    return Notification(frame_type, name, body, changes, subscription_id, text, data)


def _kind(data: dict[str, Any]) -> str | None:
    kind, frame_type = data.get("kind"), data.get("type")
    if isinstance(kind, str) and kind:
        return kind
    if "reqId" in data:
        return "resp"
    if isinstance(frame_type, str) and "id" in data:
        return "req"
    named = isinstance(frame_type, str) and logical_type(frame_type).endswith(
        ("Notification", "Distribution"))
    return "notification" if named else None


def logical_type(type_str: str) -> str:
    """The name after the last `.` or `$`: `.ams.aam.ExConversationChangeNotification` →
    `ExConversationChangeNotification`. The Java inner-class form `X$Response` becomes
    `XResponse`, so `.ams.ms.PublishEvent$Response` matches `ms.PublishEventResponse` (§3.4)."""
    tail = type_str.rpartition(".")[2]
    outer, dollar, name = tail.rpartition("$")
    if dollar and name == "Response":
        name = outer.rpartition("$")[2] + name
    return name or type_str


def is_conversation_notification(value: str | Notification) -> bool:
    name = value.name if isinstance(value, Notification) else logical_type(value)
    return name == EX_CONVERSATION_CHANGE


def is_messaging_notification(value: str | Notification) -> bool:
    name = value.name if isinstance(value, Notification) else logical_type(value)
    return name in (MESSAGING_EVENT, ONLINE_EVENT_DISTRIBUTION)


def build_request(
    type: str, body: dict[str, Any] | None = None, *, request_id: str,
    metadata: list[Any] | None = None, headers: list[Any] | None = None,
) -> str:
    """JSON text of one request (§3.1). `body` None → no body key (e.g. GetClock); `metadata`
    None or empty → no key; `headers` only for InitConnection, which has no body (§4.1)."""
    if not 1 <= len(request_id) <= MAX_REQUEST_ID_LENGTH:
        raise ValueError(f"request id must be 1-{MAX_REQUEST_ID_LENGTH} characters")
    if type == INIT_CONNECTION and (headers is None or body is not None):
        raise ValueError("InitConnection takes headers and no body")
    if type != INIT_CONNECTION and headers is not None:
        raise ValueError(f"{type} takes no headers; only InitConnection does")
    frame: dict[str, Any] = {"kind": "req", "id": request_id, "type": type}
    optional = {"body": body, "metadata": metadata or None, "headers": headers}
    frame.update((key, value) for key, value in optional.items() if value is not None)
    return orjson.dumps(frame).decode()


def client_properties(
    features: Iterable[str] = DEFAULT_FEATURES, *, init_connection: bool = False
) -> dict[str, Any]:
    """ClientProperties (§2.3): `.ClientProperties` for the Client-Properties upgrade header,
    `.ams.headers.ClientProperties` inside InitConnection. Features deduplicated, order kept."""
    return {
        "type": ".ams.headers.ClientProperties" if init_connection else ".ClientProperties",
        "appId": "recorder", "appVersion": __version__, "deviceFamily": "DESKTOP",
        "os": _OS_NAMES.get(platform.system(), "OTHER"),
        "integration": "BRAND_SDK", "integrationVersion": __version__,
        "features": list(dict.fromkeys(features)),
    }


def init_connection_headers(jwt: str, features: Iterable[str] = DEFAULT_FEATURES) -> list[Any]:
    """The `headers` of InitConnection: client properties, then the consumer JWT (§4.1)."""
    authentication = {"type": ".ams.headers.ConsumerAuthentication", "jwt": jwt}
    return [client_properties(features, init_connection=True), authentication]
