"""`create_app`: the read API as an aiohttp application over an asyncpg pool.

The caller owns the pool and the listening socket (recorder.app / recorder.cli wire it in,
after `check_listen_allowed`, serving it with `recorder.api.listener.make_runner`).
Middlewares, outermost first: problems (every error becomes application/problem+json;
unexpected ones a generic 500), bearer authentication, then database faults (a lost or refused
connection is a 503 with Retry-After, a lost one retried once first). Every GET route answers
HEAD too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from recorder.api import routes, stream
from recorder.api.auth import auth_middleware
from recorder.api.database_faults import GuardedPool, database_fault_middleware
from recorder.api.openapi import OPERATIONS, document
from recorder.api.problems import error_middleware
from recorder.api.stream import CommitWaiter
from recorder.config import DEFAULT_TOKEN_NAME
from recorder.db import migrate

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HANDLERS: dict[str, Handler] = {
    "list_conversations": routes.list_conversations,
    "get_conversation": routes.get_conversation,
    "list_messages": routes.list_messages,
    "list_conversation_events": routes.list_conversation_events,
    "list_events": routes.list_events,
    "stream_events": stream.stream_events,
    "livez": routes.livez,
    "readyz": routes.readyz,
    "metrics": routes.metrics,
    "openapi": routes.openapi,
}


def create_app(
    pool: Any,
    *,
    token: str | None = None,
    tokens: Mapping[str, str] | None = None,
    metrics_render: Callable[[], tuple[bytes, str]] | None = None,
    readiness: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    commits: CommitWaiter | None = None,
    stream_poll_s: float = 0.5,
    stream_heartbeat_s: float = 15.0,
) -> web.Application:
    """The read API. `tokens`: the accepted bearer tokens by name (`token` alone is named
    `default`); none disables authentication, which is only for loopback listeners."""
    credentials = dict(tokens or {})
    if token:
        credentials.setdefault(DEFAULT_TOKEN_NAME, token)
    app = web.Application(
        middlewares=[error_middleware, auth_middleware(credentials), database_fault_middleware])
    app[routes.POOL] = GuardedPool(pool)
    app[routes.METRICS] = metrics_render
    app[routes.READINESS] = readiness
    app[routes.HEAD_REVISION] = migrate.head_revision()
    app[routes.OPENAPI_DOC] = orjson.dumps(document())
    app[stream.STOPPING] = asyncio.Event()
    app[stream.POLL_S] = stream_poll_s
    app[stream.COMMITS] = commits
    app[stream.HEARTBEAT_S] = stream_heartbeat_s

    async def stop_streams(app: web.Application) -> None:
        app[stream.STOPPING].set()

    app.on_shutdown.append(stop_streams)
    for op in OPERATIONS:
        handler = HANDLERS[op.operation_id]
        if op.method == "GET":  # and HEAD: GET's status and headers, aiohttp drops the body
            app.router.add_get(op.path, handler, name=op.operation_id, allow_head=True)
        else:
            app.router.add_route(op.method, op.path, handler, name=op.operation_id)
    return app
