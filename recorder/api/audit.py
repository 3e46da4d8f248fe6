"""The audit trail: who read which conversation, searched what, downloaded which export.

One row per audited request in `audit` (migration 0007): when, the name of the token
presented (NULL without authentication, on loopback), the client address, the action, the
conversation and the request's parameters. Written before the data is read, on the request's
own connection, so a reader who got an answer is in the trail. The insert does not wait for
its WAL flush (`synchronous_commit` off for that one transaction): a transcript view costs a
round trip, not an fsync; a database crash can lose the last fraction of a second of audit rows
(never a recorded event). The table is append-only: a trigger refuses UPDATE and DELETE.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from recorder.api import sql as q
from recorder.api.auth import CREDENTIAL

#: Actions of the read API (the viewer adds its own).
VIEW = "conversation.view"
MESSAGES = "conversation.messages"
EVENTS = "conversation.events"
SEARCH = "conversations.search"


async def record(connection: Any, request: web.Request, action: str,
                 conversation_id: str | None = None,
                 detail: dict[str, Any] | None = None) -> None:
    """Append one audit row for `request` on `connection` (the caller's, already acquired)."""
    await connection.execute(
        q.AUDIT_INSERT, CREDENTIAL.get(), request.remote, action, conversation_id,
        None if detail is None else orjson.dumps(detail).decode(), request.path)


def query_detail(request: web.Request) -> dict[str, Any]:
    """The request's query parameters (credentials never get this far: refused with 400)."""
    return {key: request.query.getall(key) if len(request.query.getall(key)) > 1
            else request.query[key] for key in request.query}
