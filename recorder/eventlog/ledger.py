"""The `sessions` table: one row per websocket session, so every stored event can be traced to
the socket that delivered it, with its counters kept current for `recorder status`.

A database outage must not hold a socket hostage, so writes are best effort and retried: every
write is the same idempotent upsert of the whole row, repeated for open sessions on every
tick and for closed ones until it succeeds. A session opened while the database was down
therefore still gets its row, before or with the events that name it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from typing import Any

import asyncpg

from recorder.eventlog import sql
from recorder.eventlog.appender import AppendResult
from recorder.logs import event as log_event
from recorder.ums.connection import CloseInfo, UmsConnection

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Session:
    connection: UmsConnection
    identity: str
    url: str
    close: CloseInfo | None = None
    closed_at: float | None = None


class DatabaseSessionLedger:
    def __init__(
        self, pool: Any, account: str, *, timeout: float = 5.0, interval_s: float = 5.0
    ) -> None:
        self._pool = pool
        self._account = account
        self._timeout = timeout
        self._interval = interval_s
        self._sessions: dict[str, _Session] = {}  # open, or closed but not yet written
        self.duplicates: collections.Counter[str] = collections.Counter()
        self.quarantined: collections.Counter[str] = collections.Counter()

    async def opened(self, connection: UmsConnection, identity: str, url: str) -> None:
        session = _Session(connection, identity, url)
        self._sessions[str(connection.session_id)] = session
        await self._write(session)

    async def closed(self, connection: UmsConnection, close: CloseInfo) -> None:
        session = self._sessions.get(str(connection.session_id))
        if session is None:
            return
        session.close, session.closed_at = close, time.time()
        if await self._write(session):
            self._sessions.pop(str(connection.session_id), None)

    def committed(self, result: AppendResult) -> None:
        """Writer listener: duplicates and quarantined frames, per session."""
        for event in result.duplicates:
            self.duplicates[event.session_id] += 1
        for frame in result.quarantined:
            if frame.session_id is not None:
                self.quarantined[frame.session_id] += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Keep open sessions current and finish writing closed ones."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
            await self.flush()
        await self.flush()  # the sockets closed just before us: write their final rows

    async def flush(self) -> None:
        for session_id, session in list(self._sessions.items()):
            if await self._write(session) and session.close is not None:
                self._sessions.pop(session_id, None)

    async def _write(self, session: _Session) -> bool:
        connection = session.connection
        session_id = str(connection.session_id)
        close = session.close
        reason = None if close is None else (close.reason or close.error or "")[:500]
        try:
            await asyncio.wait_for(self._pool.execute(
                sql.SESSION_UPSERT,
                session_id, self._account, connection.consumer_id, session.identity,
                session.url, connection.opened_at, connection.frames, connection.events,
                self.duplicates[session_id], self.quarantined[session_id],
                connection.last_frame_at, connection.last_clock_rtt_ms, session.closed_at,
                None if close is None else close.code, reason,
            ), self._timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("sessions ledger not updated (%s); will retry", type(exc).__name__,
                        extra=log_event("ums.ledger.update_failed"))
            return False
        return True
