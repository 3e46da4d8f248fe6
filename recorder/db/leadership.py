"""One connection holding a session advisory lock: how a writer or projector used alone (tools,
tests, benches) keeps a second instance of itself passive. `recorder run` passes no lock key:
there every instance's writer writes (the table lock orders them) and the projector is chosen
by a lease (recorder.coordination), so nothing depends on session state.

The lock lives as long as the connection. A connection that failed is dropped without a
goodbye (it may be mid-protocol) and the next `acquire` takes the lock again, or waits,
passive, while another instance holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from recorder.db import sql
from recorder.db.target import DatabaseTarget, mask_url
from recorder.logs import event

log = logging.getLogger(__name__)


class LeaderConnection:
    def __init__(
        self,
        target: DatabaseTarget,
        *,
        role: str,
        lock_key: int | None,
        command_timeout_s: float,
        server_settings: dict[str, str] | None = None,
        on_acquired: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    ) -> None:
        self._target = target
        self._role = role
        self._lock_key = lock_key
        self._command_timeout = command_timeout_s
        self._server_settings = server_settings
        self._on_acquired = on_acquired
        self.connection: asyncpg.Connection | None = None
        self.is_leader = False

    async def acquire(self, stop: asyncio.Event) -> asyncpg.Connection | None:
        """The live connection holding the lock; None if stopped while another one leads."""
        if self.connection is not None and not self.connection.is_closed():
            return self.connection
        self.is_leader = False
        connection = await asyncpg.connect(
            self._target.dsn, **self._target.connect_options(
                server_settings=self._server_settings), timeout=10,
            command_timeout=self._command_timeout,
        )
        try:
            waiting_logged = False
            while self._lock_key is not None and not await connection.fetchval(
                    sql.TRY_LEADER_LOCK, self._lock_key):
                if not waiting_logged:
                    holder = await connection.fetchval(sql.LEADER_LOCK_HOLDER, self._lock_key)
                    log.warning("another %s (backend pid %s) leads; waiting, passive",
                                self._role, holder, extra=event("leader.lock.waiting"))
                    waiting_logged = True
                if stop.is_set():
                    await connection.close()
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
            if self._on_acquired is not None:
                await self._on_acquired(connection)
        except BaseException:
            connection.terminate()
            raise
        self.connection = connection
        self.is_leader = True
        log.info("%s leads on %s", self._role, mask_url(self._target.dsn),
                 extra=event("leader.lock.acquired"))
        return connection

    def discard(self) -> None:
        """Drop a connection that failed: it may be mid-protocol, so no goodbye."""
        connection, self.connection = self.connection, None
        self.is_leader = False
        if connection is not None:
            connection.terminate()

    async def close(self) -> None:
        connection, self.connection = self.connection, None
        self.is_leader = False
        if connection is not None and not connection.is_closed():
            try:
                await asyncio.wait_for(connection.close(), 2)
            except Exception:
                connection.terminate()
