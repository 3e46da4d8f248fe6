"""The `sessions` rows of events a REST service gave (agent profiles, backfills, checks).

Every event names the session that delivered it (design.md: `session_id`, a row in
`sessions`). Events from LivePerson's REST services have no websocket session, so each
consumer gets one row of its own for them: a stable id (uuid5 of the consumer id), the
service's base URL (`http(s)://`, where websocket sessions have `ws(s)://`), opened and closed
at once. `recorder status` counts identities by their websocket sessions only.
"""

from __future__ import annotations

import uuid

import asyncpg

from recorder.history import sql

#: Namespace of the session ids of events that no websocket delivered (uuid5 of the consumer).
REST_SESSION_NAMESPACE = uuid.UUID("5b0c3d52-4a37-4c57-9e4b-6f1d7f0c2a16")
REST_IDENTITY = "(rest)"


def rest_session_id(consumer_id: str) -> str:
    """The `session_id` of the events LivePerson's REST services gave about this consumer."""
    return str(uuid.uuid5(REST_SESSION_NAMESPACE, consumer_id))


class RestSessions:
    """Writes each consumer's REST session row once per process, before its first event."""

    def __init__(self, pool: asyncpg.Pool, account: str) -> None:
        self._pool = pool
        self._account = account
        self._written: set[str] = set()

    async def ensure(self, consumer_id: str, url: str) -> str:
        session_id = rest_session_id(consumer_id)
        if consumer_id not in self._written:
            async with self._pool.acquire() as connection:
                await connection.execute(sql.ENSURE_REST_SESSION, session_id, self._account,
                                         consumer_id, REST_IDENTITY, url)
            self._written.add(consumer_id)
        return session_id
