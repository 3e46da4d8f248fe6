"""Database faults of the read API: a lost or refused connection is a 503, not a 500.

All database access of the handlers goes through `GuardedPool` (app[routes.POOL]), which
knows whether an error came while connecting or while using a connection, and raises
`DatabaseUnavailable` for the ones that mean the database is gone rather than a bug:

* connecting (`pool.acquire`): OSError, TimeoutError, or any error the server sent during
  connection startup (refused: database missing or not accepting connections, too many
  connections, starting up or shutting down, authentication). "pool is closed" is not among
  them: that is our own lifecycle, a 500.
* using a connection: asyncpg's connection errors (class 08, which includes
  ConnectionDoesNotExistError), the server's shutdown errors (57P01-57P05: pg_terminate_backend,
  a crash, a dropped database, the idle session timeout), OSError, and asyncpg's client-side
  InterfaceError / InternalClientError when the connection is closed by then ("connection is
  closed", or "cannot switch to state": the pool handed out a connection whose server had just
  sent FATAL). Anything else a query raises is a bug and stays a 500.

`database_fault_middleware` turns `DatabaseUnavailable` into a 503 problem with Retry-After.
A lost connection is retried once first: every route is a read, and the handler raised before
sending anything (the event stream handles faults itself once its headers are out). The pool's
connections are expired on a loss, so the retry runs on a fresh one. A refused connection is
not retried: connecting again at once would only double the load on a struggling server.

`Outage` logs the first fault of an outage at WARNING (no traceback), and at INFO when the
database answers again. A fault from an operation that began before that recovery belongs to
the outage just reported, so a burst of killed connections is one WARNING, not one each.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler

from recorder.api.problems import Problem
from recorder.logs import event

log = logging.getLogger("recorder.api")

RETRY_AFTER_S = 2
SAFE_METHODS = frozenset({"GET", "HEAD"})

_REFUSED = (OSError, TimeoutError, asyncpg.PostgresError)
_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.DatabaseDroppedError,
    asyncpg.IdleSessionTimeoutError,
    OSError,
)
# asyncpg's own errors: a bug of ours, unless the connection is closed by then.
_CLIENT_SIDE = (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)


class DatabaseUnavailable(Exception):
    """The database could not be reached or dropped the connection; `lost`: it was open."""

    def __init__(self, cause: BaseException, *, lost: bool) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}"[:300])
        self.lost = lost


def is_lost(exc: BaseException, connection: Any) -> bool:
    """Whether `exc`, raised while using `connection`, means the connection is gone."""
    if isinstance(exc, _LOST):
        return True
    return isinstance(exc, _CLIENT_SIDE) and _is_closed(connection)


def _is_closed(connection: Any) -> bool:
    try:
        return bool(connection.is_closed())
    except asyncpg.InterfaceError:  # the pool already took back the proxy of a dead connection
        return True


class Outage:
    """One WARNING when the database stops answering, one INFO when it answers again."""

    def __init__(self) -> None:
        self.down = False
        self.epoch = 0  # recoveries so far: operations remember the one they started in
        self.failures = 0

    def fault(self, fault: DatabaseUnavailable, started_epoch: int) -> None:
        if started_epoch < self.epoch and not self.down:
            return  # in flight during the outage already reported, and its end
        self.failures += 1
        if not self.down:
            self.down = True
            log.warning("read API: the database is unavailable (%s); answering 503 with "
                        "Retry-After until it answers again", fault,
                        extra=event("api.database.unavailable"))

    def answered(self) -> None:
        if self.down:
            self.down = False
            self.epoch += 1
            log.info("read API: the database answers again (%d failed attempts)",
                     self.failures, extra=event("api.database.recovered"))
            self.failures = 0


class GuardedPool:
    """The asyncpg pool as the handlers use it, with faults raised as DatabaseUnavailable."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.outage = Outage()

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        epoch = self.outage.epoch
        try:
            connection = await self.pool.acquire()
        except _REFUSED as exc:
            raise self._fault(exc, epoch, lost=False) from exc
        try:
            yield connection
        except Exception as exc:
            if not is_lost(exc, connection):
                self.outage.answered()  # a 404 or even a bug: the database did answer
                raise
            await self.pool.expire_connections()  # the retry gets a fresh connection
            raise self._fault(exc, epoch, lost=True) from exc
        else:
            self.outage.answered()
        finally:
            await self._release(connection)

    async def _release(self, connection: Any) -> None:
        try:
            await self.pool.release(connection)
        except Exception as exc:  # asyncpg has terminated it; the pool connects anew
            log.debug("read API: releasing a database connection failed: %r", exc,
                      extra=event("api.database.release_failed"))

    def _fault(self, exc: BaseException, epoch: int, *, lost: bool) -> DatabaseUnavailable:
        fault = DatabaseUnavailable(exc, lost=lost)
        self.outage.fault(fault, epoch)
        return fault

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        async with self.acquire() as connection:
            rows: list[Any] = await connection.fetch(query, *args)
        return rows

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.acquire() as connection:
            return await connection.fetchval(query, *args)


def unavailable() -> Problem:
    return Problem(503, "the database is unavailable; retry later",
                   headers={"Retry-After": str(RETRY_AFTER_S)})


@web.middleware
async def database_fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """503 for DatabaseUnavailable; a lost connection is retried once first. Handlers must
    not raise it once their response has started (stream.py keeps such faults to itself)."""
    try:
        return await handler(request)
    except DatabaseUnavailable as fault:
        if not (fault.lost and request.method in SAFE_METHODS):
            raise unavailable() from None
    try:
        return await handler(request)
    except DatabaseUnavailable:
        raise unavailable() from None
