# ruff: noqa: RUF009  (param() is a dataclasses.field() with a Spec in its metadata)
"""The read API's parameter models and response schemas (design.md section 5).

Parameter models are parsed by recorder.api.params and documented from the same fields;
response schemas are JSON Schema (OpenAPI 3.1) and are what the schemathesis test holds the
responses to.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from recorder.api.params import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Cursor,
    Integer,
    Text,
    TimeRange,
    Timestamp,
    param,
)

_LIMIT = f"page size, 1 to {MAX_LIMIT} (larger is refused with 400)"


@dataclasses.dataclass(frozen=True)
class ConversationsQuery:
    state: str | None = param(Text(), "conversation state, e.g. OPEN or CLOSE")
    stage: str | None = param(Text(), "conversation stage, e.g. OPEN or CLOSE")
    consumer_id: str | None = param(Text(), "the recording identity (JWT sub)")
    skill_id: str | None = param(Text(), "current skill id")
    updated_since: datetime | None = param(
        Timestamp(), "only conversations whose projected row changed at or after this time")
    closed_between: tuple[datetime, datetime] | None = param(
        TimeRange(), "`from,to`: conversations whose end_ts is in [from, to)")
    after: tuple[Any, ...] | None = param(
        Cursor((int, str)), "the `next` cursor of the previous page")
    limit: int = param(Integer(1, MAX_LIMIT), _LIMIT, DEFAULT_LIMIT)


@dataclasses.dataclass(frozen=True)
class ConversationPath:
    id: str = param(Text(), "conversation id", "", location="path")


@dataclasses.dataclass(frozen=True)
class MessagesQuery:
    id: str = param(Text(), "conversation id", "", location="path")
    after: tuple[Any, ...] | None = param(
        Cursor((str, int)), "the `next` cursor of the previous page")
    limit: int = param(Integer(1, MAX_LIMIT), _LIMIT, DEFAULT_LIMIT)


@dataclasses.dataclass(frozen=True)
class EventsQuery:
    after: int = param(Integer(0), "return events with a position greater than this", 0)
    limit: int = param(Integer(1, MAX_LIMIT), _LIMIT, DEFAULT_LIMIT)


@dataclasses.dataclass(frozen=True)
class ConversationEventsQuery:
    id: str = param(Text(), "conversation id", "", location="path")
    after: int = param(Integer(0), "return events with a position greater than this", 0)
    limit: int = param(Integer(1, MAX_LIMIT), _LIMIT, DEFAULT_LIMIT)


@dataclasses.dataclass(frozen=True)
class StreamQuery:
    after: int = param(Integer(0), "start after this position (Last-Event-ID wins)", 0)
    limit: int = param(Integer(1, MAX_LIMIT), "most events sent per poll of the log",
                       DEFAULT_LIMIT)
    last_event_id: int | None = param(
        Integer(0), "resume after this position (sent by EventSource on reconnect)",
        location="header", name="Last-Event-ID")


@dataclasses.dataclass(frozen=True)
class NoQuery:
    pass


# -- response schemas ----------------------------------------------------------------------------


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


_TS = _nullable("string", format="date-time")
_STR = _nullable("string")
_INT = _nullable("integer")
_ANY: dict[str, Any] = {}


def _object(properties: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(properties)
    return schema


PARTICIPANT = _object({"id": {"type": "string"}, "role": {"type": "string"}, "state": _STR,
                       "nickname": _STR, "picture_url": _STR})

RECONCILIATION = {**_object({
    "checked_at": {"type": "string", "format": "date-time"}, "conversation_state": _STR,
    "history_records": {"type": "integer"}, "matched": {"type": "integer"},
    "backfilled": {"type": "integer"}, "only_in_log": {"type": "integer"},
    "content_differs": {"type": "integer"}, "history_partial": {"type": "boolean"},
    "requests": {"type": "integer"}, "unreported": {"type": "boolean"}, "details": _ANY,
}), "type": ["object", "null"]}

DIALOG = _object({
    "dialog_id": {"type": "string"}, "dialog_type": _STR, "channel_type": _STR, "state": _STR,
    "creation_ts": _TS, "end_ts": _TS, "closed_by": _STR, "closed_cause": _STR,
    "participants": {"type": "array", "items": _object(
        {"id": _STR, "role": _STR, "state": _STR}, required=False)},
})

CONVERSATION_SUMMARY_FIELDS: dict[str, Any] = {
    "conversation_id": {"type": "string"}, "account_id": _STR, "consumer_id": _STR,
    "brand_id": _STR, "skill_id": _STR, "state": _STR, "stage": _STR, "close_reason": _STR,
    "start_ts": _TS, "end_ts": _TS,
    "csat": _object({"rate": _INT, "resolution_confirmation": _nullable("boolean"),
                     "status": _STR}),
    "ttr": _object({"type": _STR, "value": _INT}),
    "effective_ttr": _TS, "deleted": {"type": "boolean"},
    "transfers": {"type": "array", "items": {"type": "object"}},
    "first_position": {"type": "integer"}, "last_position": {"type": "integer"},
    "updated_at": {"type": "string", "format": "date-time"},
}

CONVERSATION_SUMMARY = _object(CONVERSATION_SUMMARY_FIELDS)
CONVERSATION = _object({
    **CONVERSATION_SUMMARY_FIELDS,
    "participants": {"type": "array", "items": PARTICIPANT},
    "dialogs": {"type": "array", "items": DIALOG},
    "reconciliation": RECONCILIATION,
})

RECEIPT = _object({"participant_id": {"type": "string"}, "status": {"type": "string"},
                   "server_ts": _TS})

MESSAGE = _object({
    "dialog_id": {"type": "string"}, "sequence": {"type": "integer"}, "originator_id": _STR,
    "originator_role": _STR, "originator_nickname": _STR, "originator_picture_url": _STR,
    "event_type": _STR, "content_type": _STR, "text": _STR,
    "rich_content": _ANY, "file": _ANY, "metadata": _ANY, "audience": _STR, "event": _ANY,
    "server_ts": _TS, "position": {"type": "integer"},
    "receipts": {"type": "array", "items": RECEIPT},
})

EVENT = _object({
    "position": {"type": "integer", "minimum": 1},
    "received_at": {"type": "string", "format": "date-time"},
    "recorded_at": {"type": "string", "format": "date-time"},
    "account_id": {"type": "string"}, "consumer_id": {"type": "string"},
    "session_id": {"type": "string", "format": "uuid"},
    "kind": {"type": "string", "enum": ["conversation", "messaging", "agent", "reconciliation",
                                       "other"]},
    "type": {"type": "string"}, "change_type": _STR, "conversation_id": _STR, "dialog_id": _STR,
    "sequence": _INT, "originator_id": _STR, "server_ts": _TS, "payload": _ANY,
})


def page(item: dict[str, Any], next_schema: dict[str, Any]) -> dict[str, Any]:
    return _object({"items": {"type": "array", "items": item}, "next": next_schema})


CONVERSATION_PAGE = page(CONVERSATION_SUMMARY, _STR)
MESSAGE_PAGE = page(MESSAGE, _STR)
EVENT_PAGE = page(EVENT, _INT)

PROBLEM = _object({
    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
    "detail": {"type": "string"},
})

LIVE = _object({"status": {"type": "string", "enum": ["ok"]}})
READY = {**_object({"status": {"type": "string"}, "schema_revision": {"type": "string"}}),
         "properties": {"status": {"type": "string"}, "schema_revision": {"type": "string"},
                        "checks": {"type": "object"}}}
