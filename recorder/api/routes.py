"""Handlers of the read API. SQL lives in recorder.api.sql; parameters in recorder.api.models.

JSON is written by orjson: timestamps as RFC 3339 in UTC (`…Z`), JSONB columns passed through
verbatim (orjson.Fragment), absent values as null.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from recorder.api import audit
from recorder.api import models as m
from recorder.api import sql as q
from recorder.api.database_faults import GuardedPool
from recorder.api.params import encode_cursor, parse
from recorder.api.problems import Problem, bad_request, not_found

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
READY_TIMEOUT_S = 5.0
FIRST_KEY = ("", -(2**63))  # before every (dialog_id, sequence)

MetricsRender = Callable[[], tuple[bytes, str]]
Readiness = Callable[[], Awaitable[dict[str, Any]]]

POOL = web.AppKey("pool", GuardedPool)  # all database access: faults become 503s
OPENAPI_DOC = web.AppKey("openapi_document", bytes)
METRICS: web.AppKey[MetricsRender | None] = web.AppKey("metrics_render")
READINESS: web.AppKey[Readiness | None] = web.AppKey("readiness")
HEAD_REVISION = web.AppKey("head_revision", str)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body, option=orjson.OPT_UTC_Z),
        content_type="application/json",
    )


def fragment(text: str | None) -> orjson.Fragment | None:
    return None if text is None else orjson.Fragment(text)


def to_micros(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    try:
        return EPOCH + timedelta(microseconds=value)
    except OverflowError:
        raise bad_request("after is not a cursor this API issued", "after") from None


# -- conversations -------------------------------------------------------------------------------


def conversation_summary(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "conversation_id": r["conversation_id"], "account_id": r["account_id"],
        "consumer_id": r["consumer_id"], "brand_id": r["brand_id"], "skill_id": r["skill_id"],
        "state": r["state"], "stage": r["stage"], "close_reason": r["close_reason"],
        "start_ts": r["start_ts"], "end_ts": r["end_ts"],
        "csat": {"rate": r["csat_rate"],
                 "resolution_confirmation": r["csat_resolution_confirmation"],
                 "status": r["csat_status"]},
        "ttr": {"type": r["ttr_type"], "value": r["ttr_value"]},
        "effective_ttr": r["effective_ttr"], "deleted": r["deleted"],
        "transfers": fragment(r["transfers"]) or [],
        "first_position": r["first_position"], "last_position": r["last_position"],
        "updated_at": r["updated_at"],
    }


async def list_conversations(request: web.Request) -> web.Response:
    p = parse(m.ConversationsQuery, request)
    clauses: list[str] = []
    args: list[Any] = []

    def where(key: str, *values: Any) -> None:
        first = len(args) + 1
        clauses.append(q.CONVERSATION_FILTERS[key].format(*range(first, first + len(values))))
        args.extend(values)

    for key in ("state", "stage", "consumer_id", "skill_id", "updated_since"):
        if (value := getattr(p, key)) is not None:
            where(key, value)
    if p.closed_between is not None:
        where("closed_from", p.closed_between[0])
        where("closed_to", p.closed_between[1])
    if p.after is not None:
        where("after", from_micros(p.after[0]), p.after[1])
    args.append(p.limit + 1)
    statement = q.LIST_CONVERSATIONS.format(
        columns=q.CONVERSATION_COLUMNS, where=" AND ".join(clauses) or "true", limit=len(args))
    async with request.app[POOL].acquire() as connection:
        await audit.record(connection, request, audit.SEARCH, detail=audit.query_detail(request))
        rows = await connection.fetch(statement, *args)
    more = len(rows) > p.limit
    rows = rows[: p.limit]
    next_cursor = None
    if more:
        last = rows[-1]
        next_cursor = encode_cursor(to_micros(last["updated_at"]), last["conversation_id"])
    return json_response({"items": [conversation_summary(r) for r in rows], "next": next_cursor})


async def get_conversation(request: web.Request) -> web.Response:
    p = parse(m.ConversationPath, request)
    async with request.app[POOL].acquire() as connection:
        await audit.record(connection, request, audit.VIEW, p.id)
        row = await connection.fetchrow(q.GET_CONVERSATION_RECORD, p.id)
    if row is None:
        raise not_found("no conversation with this id has been recorded")
    body = conversation_summary(row)
    body["participants"] = orjson.loads(row["participants_json"])
    dialogs = orjson.loads(row["dialogs_json"])
    for dialog in dialogs:  # PostgreSQL's JSON timestamps, rendered like every other one
        for key in ("creation_ts", "end_ts"):
            if dialog[key] is not None:
                dialog[key] = datetime.fromisoformat(dialog[key])
    body["dialogs"] = dialogs
    reconciliation = orjson.loads(row["reconciliation_json"] or "null")
    if reconciliation is not None:
        reconciliation["checked_at"] = datetime.fromisoformat(reconciliation["checked_at"])
    body["reconciliation"] = reconciliation
    return json_response(body)


# -- messages ------------------------------------------------------------------------------------


async def list_messages(request: web.Request) -> web.Response:
    p = parse(m.MessagesQuery, request)
    dialog, sequence = p.after if p.after is not None else FIRST_KEY
    async with request.app[POOL].acquire() as connection:
        await audit.record(connection, request, audit.MESSAGES, p.id,
                           audit.query_detail(request) or None)
    async with request.app[POOL].acquire() as connection, connection.transaction(
        isolation="repeatable_read", readonly=True
    ):
        if not await connection.fetchval(q.CONVERSATION_EXISTS, p.id):
            raise not_found("no conversation with this id has been recorded")
        rows = await connection.fetch(q.MESSAGES, p.id, dialog, sequence, p.limit + 1)
        more = len(rows) > p.limit
        rows = rows[: p.limit]
        receipts = await connection.fetch(
            q.RECEIPTS, [r["dialog_id"] for r in rows], [r["sequence"] for r in rows])
    by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in receipts:
        by_key.setdefault((r["dialog_id"], r["sequence"]), []).append(
            {"participant_id": r["participant_id"], "status": r["status"],
             "server_ts": r["server_ts"]})
    items = [
        {"dialog_id": r["dialog_id"], "sequence": r["sequence"],
         "originator_id": r["originator_id"], "originator_role": r["originator_role"],
         "originator_nickname": r["originator_nickname"],
         "originator_picture_url": r["originator_picture_url"],
         "event_type": r["event_type"], "content_type": r["content_type"], "text": r["text"],
         "rich_content": fragment(r["rich_content"]), "file": fragment(r["file"]),
         "metadata": fragment(r["metadata"]), "audience": r["audience"],
         "event": fragment(r["event"]), "server_ts": r["server_ts"], "position": r["position"],
         "receipts": by_key.get((r["dialog_id"], r["sequence"]), [])}
        for r in rows
    ]
    next_cursor = encode_cursor(rows[-1]["dialog_id"], rows[-1]["sequence"]) if more else None
    return json_response({"items": items, "next": next_cursor})


# -- the log -------------------------------------------------------------------------------------


def event_item(r: Mapping[str, Any]) -> dict[str, Any]:
    item = dict(r)
    item["payload"] = orjson.Fragment(r["payload"])
    return item


def event_page(rows: list[Any]) -> web.Response:
    items = [event_item(r) for r in rows]
    return json_response({"items": items, "next": rows[-1]["position"] if rows else None})


async def list_events(request: web.Request) -> web.Response:
    p = parse(m.EventsQuery, request)
    return event_page(await request.app[POOL].fetch(q.EVENTS_AFTER, p.after, p.limit))


async def list_conversation_events(request: web.Request) -> web.Response:
    p = parse(m.ConversationEventsQuery, request)
    async with request.app[POOL].acquire() as connection:
        await audit.record(connection, request, audit.EVENTS, p.id,
                           audit.query_detail(request) or None)
        rows = await connection.fetch(q.CONVERSATION_EVENTS_AFTER, p.id, p.after, p.limit)
        if not rows and not await connection.fetchval(q.CONVERSATION_KNOWN, p.id):
            raise not_found("no conversation with this id has been recorded")
    return event_page(rows)


# -- operations ----------------------------------------------------------------------------------


async def livez(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    parse(m.NoQuery, request)
    expected = request.app[HEAD_REVISION]
    try:  # a lost or refused connection is the middleware's: retried, then a 503
        async with asyncio.timeout(READY_TIMEOUT_S):
            revision = await request.app[POOL].fetchval(q.SCHEMA_REVISION)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        raise Problem(503, "the database is not reachable or has no schema") from None
    if revision != expected:
        raise Problem(503, f"the database schema is at revision {revision}, expected {expected}",
                      extra={"schema_revision": revision})
    body: dict[str, Any] = {"status": "ready", "schema_revision": revision}
    readiness = request.app[READINESS]
    if readiness is not None:
        checks = await readiness()
        body["checks"] = checks
        if checks.get("ready") is False:
            raise Problem(503, "a component is not ready", extra={"checks": checks})
    return json_response(body)


async def metrics(request: web.Request) -> web.Response:
    parse(m.NoQuery, request)
    render = request.app[METRICS]
    if render is None:
        raise not_found("metrics are not enabled in this process")
    body, content_type = render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    parse(m.NoQuery, request)
    return web.Response(body=request.app[OPENAPI_DOC], content_type="application/json")
