"""The `sessions` table: one row per websocket session, so every stored event can be traced to
the socket that delivered it. Best effort: a database outage must not hold a socket hostage,
so failures are logged and the session goes on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from recorder import sql
from recorder.ums.connection import CloseInfo, UmsConnection

log = logging.getLogger(__name__)


class DatabaseSessionLedger:
    def __init__(self, pool: Any, account: str, *, timeout: float = 5.0) -> None:
        self._pool = pool
        self._account = account
        self._timeout = timeout

    async def opened(self, connection: UmsConnection, identity: str, url: str) -> None:
        await self._run(
            sql.SESSION_OPENED,
            str(connection.session_id), self._account, connection.consumer_id, identity,
            url, connection.opened_at,
        )

    async def closed(self, connection: UmsConnection, close: CloseInfo) -> None:
        reason = close.reason or close.error or ""
        await self._run(
            sql.SESSION_CLOSED,
            str(connection.session_id), close.code, reason[:500], connection.frames,
            connection.events, connection.last_clock_rtt_ms,
        )

    async def _run(self, statement: str, *args: Any) -> None:
        try:
            await asyncio.wait_for(self._pool.execute(statement, *args), self._timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("sessions ledger not updated: %s", type(exc).__name__)
