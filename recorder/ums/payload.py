"""What a UMS payload says: participants, dialogs, the fields of a change, rich content.

Accessors over decoded notification bodies, shared by the recording sink (keys, promoted columns,
dialog discovery) and the projection (rows). They never raise on odd input: a field of the wrong
shape reads as absent, and array-typed fields may arrive as the bare element (§2.4). Wire framing
(parsing, request building) lives in recorder.ums.frames.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import orjson

HOSTED_FILE = "hosted/file"  # what tutorials and history use; the schema says HostedFile (§4.8)


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
    return [Participant(found, role) for role, value in pairs if (found := id_text(value))]


def _participant(item: Any) -> Participant | None:
    """An {id, role, state?} object, or a bare id; None without an id."""
    if not isinstance(item, dict):
        item = {"id": item}
    found, role = id_text(item.get("id")), text_or_empty(item.get("role"))
    return Participant(found, role, text_or_empty(item.get("state")) or None) if found else None


def originator_id(change: Any) -> str | None:
    """Author of a messaging change: originatorMetadata.id, originatorId, originatorPId (§5.2)."""
    if not isinstance(change, dict):
        return None
    meta = change.get("originatorMetadata")
    first = meta.get("id") if isinstance(meta, dict) else None
    candidates = (first, change.get("originatorId"), change.get("originatorPId"))
    return next((found for value in candidates if (found := id_text(value))), None)


def originator_role(change: Any) -> str | None:
    meta = change.get("originatorMetadata") if isinstance(change, dict) else None
    return (text_or_empty(meta.get("role")) or None) if isinstance(meta, dict) else None


def dialogs(conversation_details: Any) -> list[DialogInfo]:
    """The `dialogs[]` of conversationDetails (a bare dialog object counts as one)."""
    if not isinstance(conversation_details, dict):
        return []
    found: list[DialogInfo] = []
    for dialog in as_list(conversation_details.get("dialogs")):
        if not isinstance(dialog, dict) or not (dialog_id := id_text(dialog.get("dialogId"))):
            continue
        # participantsDetails, else `participants`: a plain id list in the cobrowse example
        people = dialog.get("participantsDetails") or dialog.get("participants")
        details = tuple(p for item in as_list(people) if (p := _participant(item)))
        dialog_type, state, channel = (
            text_or_empty(dialog.get(key)) or None for key in ("dialogType", "state", "channelType")
        )
        stamp = as_int(dialog.get("metaDataLastUpdateTs"))
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
            id_text(change.get("conversationId")) or None,
            as_int(change.get("serverTimestamp")), None, None,
        )
    details = result.get("conversationDetails")
    stamp = as_int(details.get("metaDataLastUpdateTs")) if isinstance(details, dict) else None
    return ConversationChange(
        change_type if isinstance(change_type, str) else None,
        id_text(result.get("convId")) or None,
        stamp if stamp is not None else as_int(result.get("lastUpdateTime")),
        result, details,
    )


def dialog_ids(conversation_details: Any) -> list[str]:
    """The ids of `dialogs()`, without reading the rest of each dialog (dialog discovery)."""
    if not isinstance(conversation_details, dict):
        return []
    found: list[str] = []
    for dialog in as_list(conversation_details.get("dialogs")):
        if isinstance(dialog, dict) and (dialog_id := id_text(dialog.get("dialogId"))):
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
        conversation_id = id_text(result.get("convId")) or None
        server_ms = server_timestamp_ms(change)
    else:
        conversation_id = id_text(change.get("conversationId")) or None
        server_ms = as_int(change.get("serverTimestamp"))
    event = change.get("event")
    meta = change.get("originatorMetadata")
    author = id_text(meta.get("id")) if isinstance(meta, dict) else None
    if not author:
        author = id_text(change.get("originatorId")) or id_text(change.get("originatorPId"))
    return MessagingChange(
        id_text(change.get("dialogId")) or None,
        as_int(change.get("sequence")),
        conversation_id,
        server_ms,
        text_or_empty(event.get("type")) if isinstance(event, dict) else "",
        author or None,
    )


def change_conversation_id(change: Any) -> str | None:
    """`result.convId` of a conversation change, else `conversationId` (older payloads: None)."""
    if not isinstance(change, dict):
        return None
    result = change.get("result")
    if isinstance(result, dict):
        return id_text(result.get("convId")) or None
    return id_text(change.get("conversationId")) or None


def change_dialog_id(change: Any) -> str | None:
    """`dialogId` of a messaging change; conversation changes have none."""
    return (id_text(change.get("dialogId")) or None) if isinstance(change, dict) else None


def change_sequence(change: Any) -> int | None:
    """`sequence`, or None (ChatStateEvent changes have none, §6.2)."""
    return as_int(change.get("sequence")) if isinstance(change, dict) else None


def server_timestamp_ms(change: Any) -> int | None:
    """Epoch ms: `serverTimestamp` of a messaging change; for a conversation change
    `conversationDetails.metaDataLastUpdateTs`, else the older `result.lastUpdateTime` (§5.1)."""
    if not isinstance(change, dict):
        return None
    result = change.get("result")
    if not isinstance(result, dict):
        return as_int(change.get("serverTimestamp"))
    details = result.get("conversationDetails")
    stamp = as_int(details.get("metaDataLastUpdateTs")) if isinstance(details, dict) else None
    return stamp if stamp is not None else as_int(result.get("lastUpdateTime"))


def event_type(change: Any) -> str:
    """`event.type` of a messaging change, verbatim; "" when there is none."""
    event = change.get("event") if isinstance(change, dict) else None
    return text_or_empty(event.get("type")) if isinstance(event, dict) else ""


def rich_content(event: Any) -> dict[str, Any] | None:
    """Structured content: `content` as an object or as JSON text (REST history, §5.2), or the
    JSON schema's `message` on a RichContent(Event) (§4.8)."""
    if not isinstance(event, dict):
        return None
    content = event.get("content")
    event_name = text_or_empty(event.get("type")).rpartition(".")[2]  # e.g. .RichContentEvent
    if content is None and event_name.startswith("RichContent"):
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


def id_text(value: Any) -> str | None:
    """Ids compare as strings; a number stands for its decimal text (§3.1)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    try:
        return str(value)
    except ValueError:  # past Python's int-to-text digit limit: no usable id
        return None


#: Longer digit strings are no number a payload means (and past 4,300 digits int() refuses).
MAX_DIGITS = 100


def as_int(value: Any) -> int | None:
    """An integer from an int, an integral float or a decimal string; None otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text.startswith(("+", "-")) else text
        usable = digits.isascii() and digits.isdigit() and len(digits) <= MAX_DIGITS
        return int(text) if usable else None
    return None


def text_or_empty(value: Any) -> str:
    return value if isinstance(value, str) else ""
