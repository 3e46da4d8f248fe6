"""Wake-ups on commit: `LISTEN` on the log's channel, with polling as the fallback.

The writer sends `NOTIFY recorder_log, '<head>'` inside its commit transaction
(recorder.eventlog.sql.TAKE_POSITIONS), so a notification arrives only for a committed batch.
Readers in other processes (the projector, the change feed) subscribe here and look at once
instead of at their next poll. Nothing relies on it: every reader still polls on its own
interval, so the roles work through a transaction-pooling PgBouncer (where LISTEN does not),
with `RECORDER_LISTEN_NOTIFY=false`, and across a lost listening connection, which is
reconnected with backoff while the readers poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from recorder.db.retry import TRANSIENT_ERRORS, backoff_s
from recorder.db.target import DatabaseTarget
from recorder.eventlog.sql import COMMIT_CHANNEL
from recorder.logs import event

log = logging.getLogger(__name__)

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, OSError)


class CommitWakeups:
    """Calls its subscribers when a batch commits (or when it cannot tell: after a reconnect)."""

    def __init__(self, target: DatabaseTarget | None, *, listen: bool = True,
                 max_backoff_s: float = 5.0) -> None:
        self._target = target
        self._listen = listen and target is not None
        self._max_backoff = max_backoff_s
        self._subscribers: list[Callable[[], None]] = []
        self._signal = asyncio.Event()
        #: True while a LISTEN connection is open
        self.listening = False
        #: commits announced so far: a reader notes it before it reads, and waits `since` it
        self.generation = 0
        self.reconnects = 0

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.append(callback)

    def committed(self, *_: object) -> None:
        """A commit happened (a notification, or the writer's own listener in one process)."""
        self.generation += 1
        for callback in self._subscribers:
            callback()
        signal, self._signal = self._signal, asyncio.Event()
        signal.set()

    async def wait(self, timeout_s: float, since: int | None = None) -> bool:
        """Until the next commit or `timeout_s`; True when a commit woke us. `since`: the
        `generation` noted before the caller last read, so that a commit announced between
        that read and this wait is not missed (it returns at once)."""
        if since is not None and self.generation != since:
            return True
        signal = self._signal
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(signal.wait(), timeout_s)
        return signal.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        """The listening component: a dedicated connection, reconnected until `stop`."""
        if not self._listen or self._target is None:
            await stop.wait()
            return
        attempt = 0
        while not stop.is_set():
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(
                    self._target.dsn, timeout=10, **self._target.connect_options())
            except _CONNECTION_ERRORS as exc:
                attempt += 1
                delay = backoff_s(attempt, self._max_backoff)
                log.warning("cannot LISTEN for commits (%s); polling, retrying in %.1fs",
                            type(exc).__name__, delay, extra=event("wakeups.listen.retry"))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            try:
                connection.add_termination_listener(_setter(lost))
                await connection.add_listener(COMMIT_CHANNEL, self._on_notification)
                self.listening, attempt = True, 0
                self.committed()  # anything committed while we were not listening
                waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())}
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                if lost.is_set() and not stop.is_set():
                    self.reconnects += 1
                    log.warning("the LISTEN connection was lost; polling until it is back",
                                extra=event("wakeups.listen.lost"))
            except _CONNECTION_ERRORS as exc:
                log.warning("the commit listener failed (%s); polling until it is back",
                            type(exc).__name__,
                            extra=event("wakeups.listen.lost"))
            finally:
                self.listening = False
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), 5)

    def _on_notification(self, *_: object) -> None:
        self.committed()


def _setter(flag: asyncio.Event) -> Callable[[object], None]:
    return lambda _: flag.set()
