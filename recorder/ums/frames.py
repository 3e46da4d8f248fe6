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
from typing import Any, NamedTuple, TypeAlias

import orjson

from recorder import __version__
from recorder.errors import RecorderError

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

HOSTED_FILE = "hosted/file"  # what tutorials and history use; the schema says HostedFile (§4.8)
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
        return _id_text(self.data.get("reqId")) if self.data is not None else None


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


@dataclasses.dataclass(frozen=True, slots=True)
class Participant:
    id: str
    role: str  # verbatim; "" when the payload names none
    state: str | None = None  # dialog participantsDetails only: ACTIVE / SUGGESTED (§5.1)


@dataclasses.dataclass(frozen=True, slots=True)
class DialogInfo:
    dialog_id: str
    dialog_type: str | None
    state: str | None
    channel_type: str | None
    meta_data_last_update_ts: int | None
    participants_details: tuple[Participant, ...]
    data: dict[str, Any] = dataclasses.field(repr=False, compare=False)  # the dialog verbatim


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
        req_id, code = _id_text(data.get("reqId")), _as_int(data.get("code"))
        if req_id is None or code is None:
            missing = "reqId" if req_id is None else "code"
            raise MalformedFrame(raw, f"response without a usable {missing}", data)
        return Response(req_id, code, _text(frame_type), data.get("body"), text, data)
    if kind == "req":
        if (req_id := _id_text(data.get("id"))) is None:
            raise MalformedFrame(raw, "request without a usable id", data)
        return Request(req_id, _text(frame_type), data.get("body"), text, data)
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
    subscription_id = _id_text(body.get("subscriptionId")) if isinstance(body, dict) else None
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


def as_list(value: Any) -> list[Any]:
    """Array-typed fields may arrive as the bare element (§2.4)."""
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def participants(conversation_details: Any) -> list[Participant]:
    """Any of the shapes in §5.1: an array of {id, role}; a `participantsPId` role → [ids] map
    (older tutorial); `participants` as a role → [ids] map beside `participantsPId` (agent v2
    raw), where the PId UUIDs win since events name authors by them."""
    if not isinstance(conversation_details, dict):
        return []
    listed = conversation_details.get("participants")
    pid_map = conversation_details.get("participantsPId")
    if not isinstance(listed, dict) or "id" in listed:  # array form, or its bare element
        people = [p for item in as_list(listed) if (p := _participant(item))]
        if people or not isinstance(pid_map, dict):
            return people
    role_map = pid_map if isinstance(pid_map, dict) else listed if isinstance(listed, dict) else {}
    pairs = ((role, value) for role, ids in role_map.items() for value in as_list(ids))
    return [Participant(found, role) for role, value in pairs if (found := _id_text(value))]


def _participant(item: Any) -> Participant | None:
    """An {id, role, state?} object, or a bare id; None without an id."""
    if not isinstance(item, dict):
        item = {"id": item}
    found, role = _id_text(item.get("id")), _text(item.get("role"))
    return Participant(found, role, _text(item.get("state")) or None) if found else None


def originator_id(change: Any) -> str | None:
    """Author of a messaging change: originatorMetadata.id, originatorId, originatorPId (§5.2)."""
    if not isinstance(change, dict):
        return None
    meta = change.get("originatorMetadata")
    first = meta.get("id") if isinstance(meta, dict) else None
    candidates = (first, change.get("originatorId"), change.get("originatorPId"))
    return next((found for value in candidates if (found := _id_text(value))), None)


def originator_role(change: Any) -> str | None:
    meta = change.get("originatorMetadata") if isinstance(change, dict) else None
    return (_text(meta.get("role")) or None) if isinstance(meta, dict) else None


def dialogs(conversation_details: Any) -> list[DialogInfo]:
    """The `dialogs[]` of conversationDetails (a bare dialog object counts as one)."""
    if not isinstance(conversation_details, dict):
        return []
    found: list[DialogInfo] = []
    for dialog in as_list(conversation_details.get("dialogs")):
        if not isinstance(dialog, dict) or not (dialog_id := _id_text(dialog.get("dialogId"))):
            continue
        # participantsDetails, else `participants`: a plain id list in the cobrowse example
        people = dialog.get("participantsDetails") or dialog.get("participants")
        details = tuple(p for item in as_list(people) if (p := _participant(item)))
        dialog_type, state, channel = (
            _text(dialog.get(key)) or None for key in ("dialogType", "state", "channelType")
        )
        stamp = _as_int(dialog.get("metaDataLastUpdateTs"))
        found.append(DialogInfo(dialog_id, dialog_type, state, channel, stamp, details, dialog))
    return found


class ConversationChange(NamedTuple):
    """A conversation change read in one pass (what the log and the projection need of it)."""

    type: str | None  # `type` (UPSERT, DELETE, …) when it is a string
    conversation_id: str | None  # change_conversation_id
    updated_ms: int | None  # server_timestamp_ms
    result: dict[str, Any] | None  # `result`, when it is an object
    details: Any  # `result.conversationDetails` as found (an object when usable)


def read_conversation_change(change: dict[str, Any]) -> ConversationChange:
    """change.get("type"), change_conversation_id, server_timestamp_ms and the details, with
    each level of the change looked up once."""
    change_type = change.get("type")
    result = change.get("result")
    if not isinstance(result, dict):
        return ConversationChange(
            change_type if isinstance(change_type, str) else None,
            _id_text(change.get("conversationId")) or None,
            _as_int(change.get("serverTimestamp")), None, None,
        )
    details = result.get("conversationDetails")
    stamp = _as_int(details.get("metaDataLastUpdateTs")) if isinstance(details, dict) else None
    return ConversationChange(
        change_type if isinstance(change_type, str) else None,
        _id_text(result.get("convId")) or None,
        stamp if stamp is not None else _as_int(result.get("lastUpdateTime")),
        result, details,
    )


def dialog_ids(conversation_details: Any) -> list[str]:
    """The ids of `dialogs()`, without reading the rest of each dialog (dialog discovery)."""
    if not isinstance(conversation_details, dict):
        return []
    found: list[str] = []
    for dialog in as_list(conversation_details.get("dialogs")):
        if isinstance(dialog, dict) and (dialog_id := _id_text(dialog.get("dialogId"))):
            found.append(dialog_id)
    return found


class MessagingChange(NamedTuple):
    """A messaging change read in one pass: the promoted columns of its log row."""

    dialog_id: str | None  # change_dialog_id
    sequence: int | None  # change_sequence
    conversation_id: str | None  # change_conversation_id
    server_ms: int | None  # server_timestamp_ms
    event_type: str  # event_type
    originator_id: str | None  # originator_id


def read_messaging_change(change: dict[str, Any]) -> MessagingChange:
    """The extractors below, applied to one messaging change with each field looked up once."""
    result = change.get("result")
    if isinstance(result, dict):  # not a messaging shape; read as the extractors would
        conversation_id = _id_text(result.get("convId")) or None
        server_ms = server_timestamp_ms(change)
    else:
        conversation_id = _id_text(change.get("conversationId")) or None
        server_ms = _as_int(change.get("serverTimestamp"))
    event = change.get("event")
    meta = change.get("originatorMetadata")
    author = _id_text(meta.get("id")) if isinstance(meta, dict) else None
    if not author:
        author = _id_text(change.get("originatorId")) or _id_text(change.get("originatorPId"))
    return MessagingChange(
        _id_text(change.get("dialogId")) or None,
        _as_int(change.get("sequence")),
        conversation_id,
        server_ms,
        _text(event.get("type")) if isinstance(event, dict) else "",
        author or None,
    )


def change_conversation_id(change: Any) -> str | None:
    """`result.convId` of a conversation change, else `conversationId` (older payloads: None)."""
    if not isinstance(change, dict):
        return None
    result = change.get("result")
    if isinstance(result, dict):
        return _id_text(result.get("convId")) or None
    return _id_text(change.get("conversationId")) or None


def change_dialog_id(change: Any) -> str | None:
    """`dialogId` of a messaging change; conversation changes have none."""
    return (_id_text(change.get("dialogId")) or None) if isinstance(change, dict) else None


def change_sequence(change: Any) -> int | None:
    """`sequence`, or None (ChatStateEvent changes have none, §6.2)."""
    return _as_int(change.get("sequence")) if isinstance(change, dict) else None


def server_timestamp_ms(change: Any) -> int | None:
    """Epoch ms: `serverTimestamp` of a messaging change; for a conversation change
    `conversationDetails.metaDataLastUpdateTs`, else the older `result.lastUpdateTime` (§5.1)."""
    if not isinstance(change, dict):
        return None
    result = change.get("result")
    if not isinstance(result, dict):
        return _as_int(change.get("serverTimestamp"))
    details = result.get("conversationDetails")
    stamp = _as_int(details.get("metaDataLastUpdateTs")) if isinstance(details, dict) else None
    return stamp if stamp is not None else _as_int(result.get("lastUpdateTime"))


def event_type(change: Any) -> str:
    """`event.type` of a messaging change, verbatim; "" when there is none."""
    event = change.get("event") if isinstance(change, dict) else None
    return _text(event.get("type")) if isinstance(event, dict) else ""


def rich_content(event: Any) -> dict[str, Any] | None:
    """Structured content: `content` as an object or as JSON text (REST history, §5.2), or the
    JSON schema's `message` on a RichContent(Event) (§4.8)."""
    if not isinstance(event, dict):
        return None
    content = event.get("content")
    if content is None and logical_type(_text(event.get("type"))).startswith("RichContent"):
        content = event.get("message")
    if isinstance(content, str):
        try:
            content = orjson.loads(content)
        except orjson.JSONDecodeError:
            return None
    return content if isinstance(content, dict) else None


def content_type(event: Any) -> str | None:
    """`contentType`, `HostedFile` spelled `hosted/file`; the event (raw value) is unchanged."""
    value = event.get("contentType") if isinstance(event, dict) else None
    if not isinstance(value, str):
        return None
    return HOSTED_FILE if value.replace("/", "").replace("_", "").lower() == "hostedfile" else value


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


def _id_text(value: Any) -> str | None:
    """Ids compare as strings; a number stands for its decimal text (§3.1)."""
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _as_int(value: Any) -> int | None:
    """An integer from an int, an integral float or a decimal string; None otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text.startswith(("+", "-")) else text
        return int(text) if digits.isascii() and digits.isdigit() else None
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
