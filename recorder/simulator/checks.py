"""What the simulator refuses with 400: request bodies checked before anything changes.

Checks follow the documented shapes (protocol.md §4) and enums, including values newer than
the published schemas (ACTION receipts, BACKGROUND chat state); error texts are short strings.
"""

from __future__ import annotations

from typing import Any

from recorder.simulator.model import CLOSE, OPEN, TTR_TYPES, Json

STATES = frozenset({OPEN, CLOSE})
RECEIPT_STATUSES = frozenset({"ACCEPT", "READ", "ACCESS", "NACK", "ACTION"})
CHAT_STATES = frozenset({"ACTIVE", "INACTIVE", "GONE", "COMPOSING", "PAUSE", "BACKGROUND"})
FILE_TYPES = frozenset({"IMG", "JPG", "PNG", "GIF", "TXT", "PDF"})
UPLOAD_TYPES = frozenset({"JPG", "JPEG", "PNG", "GIF"})
CSAT_STATUSES = frozenset({"FILLED", "PARTIALLY_FILLED", "SKIPPED"})


class BadRequest(Exception):
    def __init__(self, text: str, code: int = 400) -> None:
        self.code = code
        super().__init__(text)


def check_field(field: Json) -> None:
    name = field.get("field")
    if name in ("ConversationStateField", "Stage"):
        if field.get("conversationState") != CLOSE:
            raise BadRequest(f"Bad request: {name} only accepts conversationState CLOSE")
    elif name == "CSATRate":
        rate = field.get("csatRate")
        if (
            not isinstance(rate, int) or isinstance(rate, bool) or not 1 <= rate <= 5
            or not isinstance(field.get("csatResolutionConfirmation"), bool)
            or field.get("status") not in CSAT_STATUSES
        ):
            raise BadRequest("Bad request: CSATRate needs csatRate 1-5, "
                             "csatResolutionConfirmation and status")
    elif name == "TTRField":
        value = field.get("value")
        if field.get("ttrType") not in TTR_TYPES or not isinstance(value, int) or value < 0:
            raise BadRequest("Bad request: TTRField needs ttrType and a value >= 0")
    elif name == "DialogChange":
        dialog = field.get("dialog")
        if field.get("type") != "UPDATE" or not isinstance(dialog, dict) or (
            dialog.get("state") != CLOSE or not isinstance(dialog.get("dialogId"), str)
        ):
            raise BadRequest("Bad request: DialogChange supports UPDATE to state CLOSE only")
    else:
        raise BadRequest(f"Bad request: field {name} cannot be changed by a consumer")


def check_event(event: Any) -> None:
    if not isinstance(event, dict):
        raise BadRequest("Bad request: event is required")
    etype = event.get("type")
    if etype == "ContentEvent":
        message = event.get("message")
        if event.get("contentType") in ("hosted/file", "HostedFile"):
            if not isinstance(message, dict) or not all(
                isinstance(message.get(k), str) for k in ("caption", "relativePath", "fileType")
            ) or message["fileType"] not in FILE_TYPES:
                raise BadRequest("Bad request: hosted file needs caption, relativePath, fileType")
        elif message is None:
            raise BadRequest("Bad request: ContentEvent needs a message")
    elif etype == "RichContentEvent":
        if not isinstance(event.get("content"), dict | str):
            raise BadRequest("Bad request: RichContentEvent needs content")
    elif etype == "AcceptStatusEvent":
        sequences = event.get("sequenceList")
        if event.get("status") not in RECEIPT_STATUSES or not isinstance(sequences, list | int):
            raise BadRequest("Bad request: AcceptStatusEvent needs status and sequenceList")
    elif etype == "ChatStateEvent":
        if event.get("chatState") not in CHAT_STATES:
            raise BadRequest("Bad request: unknown chatState")
    else:
        raise BadRequest(f"Bad request: unsupported event type {etype}")


def state_filter(value: Any, name: str) -> frozenset[str]:
    if value is None:
        return STATES  # no filter given: both states (UNCONFIRMED default)
    items = value if isinstance(value, list) else [value]
    if not items or any(item not in STATES for item in items):
        raise BadRequest(f"Bad request: {name} must be OPEN and/or CLOSE")
    return frozenset(items)


def counter(value: Any, name: str) -> int:
    """An integer >= 0 (`fromSeq`, `minLastUpdatedTime`); digits in a string are tolerated."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"Bad request: {name} must be an integer >= 0")
    return value


def check_upload(body: Json) -> str:
    """The file type of a GenerateURLForUploadFile body (`fileSize` is a string per schema)."""
    size, file_type = body.get("fileSize"), body.get("fileType")
    if not (isinstance(size, int) or (isinstance(size, str) and size.isdigit())):
        raise BadRequest("Bad request: fileSize is required")
    if file_type not in UPLOAD_TYPES:
        raise BadRequest("Bad request: fileType must be JPG, JPEG, PNG or GIF")
    return str(file_type)
