"""The single writer: drains a bounded queue in micro-batches, one transaction per batch.

- Positions come from `log_head` under a table lock: contiguous from 1, in commit order.
- Keys already stored (in the batch or the table) are dropped before positions are given out.
- Listeners hear which events were newly stored only after the commit returned.
- Alone (tools, tests), a session advisory lock keeps a second writer passive; `recorder run`
  passes no lock key: every instance's writer writes, ordered by the table lock.
- A database outage is retried with backoff; the queue stays bounded, so producers block.
- A batch that fails for a reason other than the connection is retried row by row; a row that
  still fails goes to `quarantine` whole, with the error, and the writer keeps going.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

import asyncpg

from recorder.db import sql as db_sql
from recorder.db.leadership import LeaderConnection
from recorder.db.retry import TRANSIENT_ERRORS, backoff_s
from recorder.db.target import DatabaseTarget
from recorder.errors import WriterStoppedError
from recorder.eventlog import sql
from recorder.eventlog.appender import (
    AppendResult,
    BatchAppender,
    LogIntegrityError,
    QueueItem,
)
from recorder.logs import event

__all__ = ["AppendResult", "EventWriter", "LogIntegrityError", "WriterStats"]

log = logging.getLogger(__name__)

#: Advisory lock key for "the event log writer" (any fixed bigint; this spells "recorder").
LEADER_LOCK_KEY = 0x7265636F72646572

#: How soon a stop ends a long batch window (RECORDER_WRITER_BATCH_WAIT_MS goes up to 1 s).
STOP_CHECK_S = 0.05

#: Server-side settings of the writer's session. The TCP settings make the server drop the
#: session of a writer whose network vanished, so its advisory lock does not outlive it.
WRITER_SESSION_SETTINGS = {
    "synchronous_commit": "on",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "30000",
}


@dataclasses.dataclass
class WriterStats:
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    batches: int = 0
    retries: int = 0
    row_fallbacks: int = 0
    connections: int = 0


class EventWriter:
    def __init__(
        self,
        target: DatabaseTarget,
        *,
        queue_size: int = 10_000,
        batch_size: int = 1_000,
        batch_wait_ms: float = 2.0,
        lock_key: int | None = LEADER_LOCK_KEY,
        drain_timeout_s: float = 10.0,
        max_backoff_s: float = 5.0,
        command_timeout_s: float = 60.0,
    ) -> None:
        self._target = target
        self.queue: asyncio.Queue[QueueItem] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._batch_wait = batch_wait_ms / 1000
        self._drain_timeout = drain_timeout_s
        self._max_backoff = max_backoff_s
        self._listeners: list[Callable[[AppendResult], None]] = []
        self._leader = LeaderConnection(
            target, role="event log writer", lock_key=lock_key,
            command_timeout_s=command_timeout_s, server_settings=WRITER_SESSION_SETTINGS,
            on_acquired=self._on_leadership,
        )
        self._head_changed = asyncio.Event()
        self._accepting = True
        self._stopped = False
        self._drain_deadline: float | None = None
        self.head = 0
        #: monotonic start of the commit in flight (None: none); the watchdog reads it
        self._commit_started: float | None = None
        self.stats = WriterStats()
        self._appender = BatchAppender(lambda: self.head, self._count_fallback)

    @property
    def is_leader(self) -> bool:
        return self._leader.is_leader

    def stalled_s(self) -> float:
        """How long the commit in flight has been running; 0 when none is. Retries through
        an outage are not a stall: each attempt ends (by error or timeout) and a new begins."""
        started = self._commit_started
        return 0.0 if started is None else time.monotonic() - started

    # -- producer side ---------------------------------------------------------------------------

    async def put(self, item: QueueItem) -> None:
        """Queue one event (or quarantined frame); waits while the queue is full."""
        if not self._accepting:
            raise WriterStoppedError("the event writer is stopping")
        await self.queue.put(item)

    def add_listener(self, listener: Callable[[AppendResult], None]) -> None:
        """Called after each commit, in commit order. Must be quick and must not raise."""
        self._listeners.append(listener)

    async def wait_for_head(self, position: int) -> int:
        """Wait until everything up to `position` is committed; return the head."""
        while self.head < position:
            if self._stopped:
                raise WriterStoppedError(f"the writer stopped at {self.head}, before {position}")
            await self._head_changed.wait()
        return self.head

    # -- the writer task -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Write until `stop` is set, then drain what is queued (bounded by the drain timeout)."""
        self._accepting = True
        self._stopped = False
        self._drain_deadline = None
        unwritten = 0
        try:
            while True:
                if stop.is_set():
                    self._accepting = False  # refuse new work; finish what is queued
                    if self._drain_deadline is None:
                        self._drain_deadline = time.monotonic() + self._drain_timeout
                    elif time.monotonic() > self._drain_deadline:
                        break
                batch = await self._next_batch(stop, draining=stop.is_set())
                if batch is None:
                    break
                if batch and not await self._commit_with_retry(batch, stop):
                    unwritten = len(batch)
                    break
        finally:
            self._accepting = False
            self._stopped = True
            self._head_changed.set()  # waiters learn that no more commits are coming
            unwritten += self.queue.qsize()
            if unwritten:
                # Not lost upstream: cursors advance only after commit, so these are re-fetched.
                log.warning("writer stopped with %d queued events not written", unwritten,
                            extra=event("writer.drain.incomplete"))
            await self._leader.close()

    async def _next_batch(self, stop: asyncio.Event, draining: bool) -> list[QueueItem] | None:
        """Up to batch_size items, waiting at most batch_wait after the first.

        [] when `stop` fired while idle; None when draining and the queue is empty.
        """
        if self.queue.empty():
            if draining:
                return None
            first = await self._get_unless_stopped(stop)
            if first is None:
                return []
            batch = [first]
        else:
            batch = [self.queue.get_nowait()]
        deadline = time.monotonic() + self._batch_wait
        while len(batch) < self._batch_size:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stop.is_set():
                break  # a stop never waits out the batch window: commit what is here
            try:
                # In slices: a stop is seen within STOP_CHECK_S however long the window, at
                # no cost to the default 2 ms window (one wait, as before).
                batch.append(await asyncio.wait_for(self.queue.get(),
                                                    min(remaining, STOP_CHECK_S)))
            except TimeoutError:
                continue  # the loop's top checks the window and the stop
        return batch

    async def _get_unless_stopped(self, stop: asyncio.Event) -> QueueItem | None:
        """The next item; None when `stop` fires first."""
        getter = asyncio.ensure_future(self.queue.get())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        return None

    async def _commit_with_retry(self, batch: list[QueueItem], stop: asyncio.Event) -> bool:
        """Commit the batch, retrying through outages. False if stopping forced us to give up."""
        attempt = 0
        head_before = self.head
        while True:
            try:
                connection = await self._leader.acquire(stop)
                if connection is None:
                    return False
                # After a failure the last attempt may have committed without our hearing.
                committed_after = head_before if attempt else None
                self._commit_started = time.monotonic()
                try:
                    result = await self._appender.append(connection, batch, committed_after)
                finally:
                    self._commit_started = None
                self._publish(result)
                return True
            except TRANSIENT_ERRORS as exc:
                attempt += 1
                self.stats.retries += 1
                self._leader.discard()
                delay = backoff_s(attempt, self._max_backoff)
                log.warning(
                    "database unavailable (%s: %s); retrying %d events in %.2fs (attempt %d)",
                    type(exc).__name__, exc, len(batch), delay, attempt,
                    extra=event("writer.outage.retry"),
                )
                if stop.is_set():
                    if self._drain_deadline is None:
                        self._drain_deadline = time.monotonic() + self._drain_timeout
                    if time.monotonic() + delay > self._drain_deadline:
                        return False
                await asyncio.sleep(delay)

    async def _on_leadership(self, connection: asyncpg.Connection) -> None:
        self.head = int(await connection.fetchval(sql.HEAD))
        await _warn_if_not_durable(connection)
        self.stats.connections += 1
        log.info("event log writer at head %d", self.head, extra=event("writer.leader.acquired"))

    def _count_fallback(self) -> None:
        self.stats.row_fallbacks += 1

    def _publish(self, result: AppendResult) -> None:
        self.stats.batches += 1
        self.stats.stored += len(result.stored)
        self.stats.duplicates += len(result.duplicates)
        self.stats.quarantined += len(result.quarantined)
        if result.quarantined:
            log.error("quarantined %d frames; see the quarantine table", len(result.quarantined),
                      extra=event("writer.frames.quarantined"))
        if result.head > self.head:
            self.head = result.head
        result.head = self.head
        for listener in self._listeners:
            try:
                listener(result)
            except Exception:
                log.exception("writer listener failed", extra=event("writer.listener.failed"))
        # Wake every waiter, then arm a fresh event for the next commit.
        self._head_changed.set()
        self._head_changed = asyncio.Event()


async def _warn_if_not_durable(connection: asyncpg.Connection) -> None:
    settings = dict(await connection.fetch(db_sql.SERVER_SETTINGS))
    for name in ("fsync", "full_page_writes"):
        if settings.get(name) == "off":
            log.error("PostgreSQL has %s = off: committed events can be lost in a crash", name,
                      extra=event("writer.durability.off"))


