"""The operations of the read API and the OpenAPI 3.1 document built from them.

`OPERATIONS` is the one table: recorder.api.app registers a route per entry (by operation
id → handler), and `document()` describes the same entries, with the parameters taken from
each entry's parameter model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from recorder.api import models as m
from recorder.api.params import openapi_parameters
from recorder.api.problems import PROBLEM_JSON

JSON = "application/json"


@dataclasses.dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    path: str
    summary: str
    model: type[Any] | None
    response: dict[str, Any] | None  # JSON Schema of the 200 body; None: not JSON
    content_type: str = JSON
    auth: bool = True
    errors: tuple[int, ...] = (400,)
    database: bool = True  # reads the database: a 503 with Retry-After when it is unavailable


OPERATIONS: tuple[Operation, ...] = (
    Operation("list_conversations", "GET", "/conversations",
              "Conversations, filtered; keyset pages ordered by (updated_at, conversation_id)",
              m.ConversationsQuery, m.CONVERSATION_PAGE),
    Operation("get_conversation", "GET", "/conversations/{id}",
              "One conversation with its participants, dialogs and transfers",
              m.ConversationPath, m.CONVERSATION, errors=(400, 404)),
    Operation("list_messages", "GET", "/conversations/{id}/messages",
              "A conversation's messages with their receipts, ordered by (dialog_id, sequence)",
              m.MessagesQuery, m.MESSAGE_PAGE, errors=(400, 404)),
    Operation("list_conversation_events", "GET", "/conversations/{id}/events",
              "A conversation's raw events in log position order",
              m.ConversationEventsQuery, m.EVENT_PAGE, errors=(400, 404)),
    Operation("list_events", "GET", "/events",
              "The raw event log in position order: the change feed", m.EventsQuery,
              m.EVENT_PAGE),
    Operation("stream_events", "GET", "/events/stream",
              "The event log as server-sent events (id: = position); resumes from "
              "Last-Event-ID or ?after=", m.StreamQuery, None, content_type="text/event-stream"),
    Operation("livez", "GET", "/livez", "Liveness: the process answers", None, m.LIVE,
              auth=False, errors=(), database=False),
    Operation("readyz", "GET", "/readyz",
              "Readiness: the database answers and its schema is at this code's revision",
              m.NoQuery, m.READY, errors=(400, 503)),
    Operation("metrics", "GET", "/metrics", "Prometheus metrics", m.NoQuery, None,
              content_type="text/plain", errors=(400, 404), database=False),
    Operation("openapi", "GET", "/openapi.json", "This document", m.NoQuery,
              {"type": "object"}, database=False),
)

_ERROR_TEXT = {
    400: "invalid parameters", 401: "missing or invalid bearer token",
    404: "no such resource", 500: "internal error",
    503: "the database is unavailable (retry after Retry-After seconds); /readyz: not ready",
}


def _problem(status: int) -> dict[str, Any]:
    return {"description": _ERROR_TEXT[status],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _operation(op: Operation) -> dict[str, Any]:
    if op.response is not None:
        body = {op.content_type: {"schema": op.response}}
    else:
        body = {op.content_type: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {"200": {"description": "success", "content": body}}
    statuses = list(op.errors) + ([401] if op.auth else []) + ([503] if op.database else [])
    for status in sorted({*statuses, 500}):
        responses[str(status)] = _problem(status)
    if op.database:
        responses["503"]["headers"] = {
            "Retry-After": {"schema": {"type": "integer", "minimum": 1}, "required": False}}
    if op.auth:
        responses["401"]["headers"] = {
            "WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}
    spec: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "parameters": openapi_parameters(op.model),
        "responses": responses,
    }
    if not op.auth:
        spec["security"] = []
    return spec


def document(version: str = "0.1.0") -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "recorder read API",
            "version": version,
            "description": (
                "Read-only access to recorded LivePerson conversations and the raw event log. "
                "Keyset pagination: pass the reply's `next` as `?after=`; `next` is null when "
                "there is nothing further (for /events: when the page is empty). Errors are "
                "application/problem+json. Every GET also answers HEAD (no body)."
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Problem": m.PROBLEM},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
