"""The projector task: follows the log by position and keeps the projection tables current.

- Reads from its saved position up to the log head, `batch_size` events at a time, and applies
  each batch in one transaction together with the compare-and-set of its position, so a crash
  at any point leaves rows and position in agreement.
- Caught up, it waits for `wake()` (the writer's commit listener) or the poll interval.
- One projector per database: under `recorder run`, the instance holding the `projector`
  lease (recorder.coordination); its epoch is checked inside every batch's transaction, so a
  projector that stalled and lost the lease cannot move the position. Used alone (tools,
  tests), a session advisory lock keeps a second one passive instead. The compare-and-set of
  the position is the backstop either way.
- A database outage is retried with backoff, like the writer. Any other error stops it
  loudly: a projection that silently skips events would be worse than none.
- Statistics: every `statistics_check_s` of progress a side task, on a connection of its own
  (an ANALYZE of a large table takes ~100 ms and must not hold up the next batch), ANALYZEs
  the projection tables that more than doubled since their last ANALYZE. A projection growing
  from empty (a new install, a catch-up from a long log) otherwise runs on the planner's
  defaults until autovacuum's first pass, and replacing a conversation's participants and
  dialogs becomes a full scan: at 40,000 conversations that cut the projector from ~6,100 to
  ~1,900 events/s (bench/projector.py).
- On stop: one last catch-up pass to the head, bounded by `drain_timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time

import asyncpg

from recorder.coordination.coordinator import Coordinator, Hold
from recorder.coordination.leases import PROJECTOR, fence
from recorder.db.leadership import LeaderConnection
from recorder.db.retry import TRANSIENT_ERRORS, backoff_s
from recorder.db.target import DatabaseTarget, connect
from recorder.errors import DatabaseError, FencedError, ProjectionConflictError, ProjectionError
from recorder.eventlog import sql as log_sql
from recorder.logs import event
from recorder.projection import PROJECTION_NAME
from recorder.projection import sql as q
from recorder.projection.fold import apply_and_advance, load_position
from recorder.projection.rows import LogRow

log = logging.getLogger(__name__)

#: Advisory lock key for "the projector" (spells "rec-proj").
PROJECTOR_LOCK_KEY = 0x7265632D70726F6A

_PASS_THROUGH: tuple[type[BaseException], ...] = (
    ProjectionConflictError, FencedError, *TRANSIENT_ERRORS)
#: the tables whose statistics the projector keeps current while they grow
STATISTICS_TABLES = ("conversations", "dialogs", "participants", "messages", "receipts")
#: below this many changed rows a table's statistics are left to autovacuum
STATISTICS_MIN_CHANGES = 1000

_FINAL_PASS_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError, FencedError, *TRANSIENT_ERRORS)


@dataclasses.dataclass
class ProjectorStats:
    events: int = 0
    batches: int = 0
    retries: int = 0
    connections: int = 0
    analyzed: int = 0


class Projector:
    def __init__(
        self,
        target: DatabaseTarget,
        *,
        batch_size: int = 5000,
        poll_interval_s: float = 0.05,
        name: str = PROJECTION_NAME,
        lock_key: int = PROJECTOR_LOCK_KEY,
        command_timeout_s: float = 60.0,
        max_backoff_s: float = 5.0,
        drain_timeout_s: float = 20.0,
        statistics_check_s: float = 5.0,
        coordinator: Coordinator | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self._batch_size = batch_size
        self._poll_interval = poll_interval_s
        self._name = name
        self._max_backoff = max_backoff_s
        self._drain_timeout = drain_timeout_s
        self._target = target
        self._statistics_check_s = statistics_check_s
        self._statistics_task: asyncio.Task[None] | None = None
        self._statistics_checked_at = time.monotonic()
        self._coordinator = coordinator
        self._epoch: int | None = None  # the lease tenure the position was loaded under
        self._leader = LeaderConnection(
            target, role=f"projector {name!r}",
            lock_key=None if coordinator is not None else lock_key,
            command_timeout_s=command_timeout_s, on_acquired=self._on_leadership,
        )
        self._wakeup = asyncio.Event()
        self._advanced = asyncio.Event()
        #: the saved position: every event at or below it is in the tables
        self.position = 0
        #: the log head as last read
        self.head = 0
        #: wall-clock time of the last commit, and how long after its newest event was recorded
        self.last_applied_at: float | None = None
        self.lag_s: float | None = None
        self.stats = ProjectorStats()

    @property
    def is_leader(self) -> bool:
        if self._coordinator is not None and self._lease() is None:
            return False
        return self._leader.is_leader

    def _lease(self) -> Hold | None:
        assert self._coordinator is not None
        return self._coordinator.holding(PROJECTOR)

    @property
    def lag_events(self) -> int:
        """Events stored but not yet projected, as of the last head read."""
        return max(0, self.head - self.position)

    def wake(self) -> None:
        """New events were committed: look now rather than at the next poll."""
        self._wakeup.set()

    async def wait_for_position(self, position: int, timeout_s: float = 30.0) -> int:
        """Wait until the projection includes `position` (read-your-writes, tests)."""
        async with asyncio.timeout(timeout_s):
            while self.position < position:
                await self._advanced.wait()
        return self.position

    # -- the task ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        try:
            while not stop.is_set():
                try:
                    if self._coordinator is not None and not await self._take_lease(stop):
                        break
                    connection = await self._leader.acquire(stop)
                    if connection is None:
                        break
                    # Cleared before reading the head, so a wake-up during the step is kept.
                    self._wakeup.clear()
                    progressed = await self.step(connection)
                    attempt = 0
                    if not progressed:
                        await self._idle(stop)
                except FencedError as exc:
                    log.warning("projector: %s; passive until the lease comes back", exc,
                                extra=event("projector.lease.lost"))
                except TRANSIENT_ERRORS as exc:
                    attempt += 1
                    self.stats.retries += 1
                    self._leader.discard()
                    delay = backoff_s(attempt, self._max_backoff)
                    log.warning("projector: database unavailable (%s: %s); retrying in %.2fs",
                                type(exc).__name__, exc, delay,
                                extra=event("projector.outage.retry"))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
            await self._final_pass()
        finally:
            if self._statistics_task is not None:
                self._statistics_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._statistics_task
            await self._leader.close()

    async def step(self, connection: asyncpg.Connection) -> bool:
        """Apply the next batch (up to the head) in one transaction. False when caught up."""
        head = int(await connection.fetchval(log_sql.HEAD))
        self.head = max(self.head, head)
        if head <= self.position:
            return False
        limit = self._batch_size
        found = await connection.fetch(q.READ_RANGE_TIMED, self.position, head, limit)
        rows = [LogRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in found]
        new = rows[-1].position if len(rows) == limit else head
        old = self.position
        try:
            stats = await apply_and_advance(connection, rows, old, new, self._name,
                                            guard=self._fence if self._coordinator else None)
        except _PASS_THROUGH:
            raise
        except asyncpg.PostgresError as exc:
            raise ProjectionError(
                f"projection {self._name!r} cannot apply events {old + 1}..{new}: {exc}"
            ) from exc
        now = time.time()
        self.position = new
        self.last_applied_at = now
        if found:
            self.lag_s = max(0.0, now - found[-1]["recorded_at"])
        self.stats.events += stats.events
        self.stats.batches += 1
        self._advanced.set()
        self._advanced = asyncio.Event()
        if (time.monotonic() - self._statistics_checked_at >= self._statistics_check_s
                and self._statistics_task is None):
            self._statistics_checked_at = time.monotonic()
            self._statistics_task = asyncio.create_task(
                self._refresh_statistics_aside(), name="projector-statistics")
        return True

    async def _refresh_statistics_aside(self) -> None:
        try:
            connection = await connect(self._target, timeout=10)
            try:
                await self.refresh_statistics(connection)
            finally:
                await connection.close()
        except (DatabaseError, OSError, asyncpg.PostgresError) as exc:  # next check retries
            log.warning("projector: statistics not refreshed (%s: %s)", type(exc).__name__, exc,
                        extra=event("projector.statistics.failed"))
        finally:
            self._statistics_task = None

    async def refresh_statistics(self, connection: asyncpg.Connection) -> list[str]:
        """ANALYZE the projection tables that outgrew their statistics; their names."""
        self._statistics_checked_at = time.monotonic()
        stale = [r[0] for r in await connection.fetch(
            q.STALE_STATISTICS, list(STATISTICS_TABLES), STATISTICS_MIN_CHANGES)]
        for table in stale:
            await connection.execute(q.analyze(table))
            self.stats.analyzed += 1
            log.info("projector: statistics of %s refreshed (it outgrew them)", table,
                     extra=event("projector.statistics.refreshed"))
        return stale

    async def _take_lease(self, stop: asyncio.Event) -> bool:
        """Wait for the projector lease; on a new tenure, resume from the saved position (the
        previous holder moved it). False once stopping."""
        assert self._coordinator is not None
        hold = self._lease()
        if hold is None:
            hold = await self._coordinator.wait_for(PROJECTOR, stop)
            if hold is None:
                return False
        if hold.epoch != self._epoch:
            connection = await self._leader.acquire(stop)
            if connection is None:
                return False
            self.position = await load_position(connection, self._name)
            self._epoch = hold.epoch
            log.info("projector %r leads by lease (epoch %d) at position %d", self._name,
                     hold.epoch, self.position, extra=event("projector.lease.acquired"))
        return True

    async def _fence(self, connection: asyncpg.Connection) -> None:
        hold = self._lease()
        assert self._coordinator is not None
        if hold is None or not await fence(connection, self._coordinator.instance, hold.held):
            epoch = self._epoch if hold is None else hold.epoch
            self._epoch = None
            raise FencedError(PROJECTOR, -1 if epoch is None else epoch)

    async def _idle(self, stop: asyncio.Event) -> None:
        """Until a wake-up, a stop or the poll interval, whichever comes first."""
        waiters = {asyncio.ensure_future(self._wakeup.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(waiters, timeout=self._poll_interval,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _final_pass(self) -> None:
        """Catch up with what the writer committed before it stopped; bounded."""
        if not self.is_leader:
            return
        try:
            async with asyncio.timeout(self._drain_timeout):
                while await self.step(self._require_connection()):
                    pass
        except _FINAL_PASS_ERRORS as exc:
            log.warning("projector stopped at %d before the head %d (%s)",
                        self.position, self.head, type(exc).__name__,
                        extra=event("projector.drain.incomplete"))

    # -- the connection ------------------------------------------------------------------------

    def _require_connection(self) -> asyncpg.Connection:
        if self._leader.connection is None:
            raise ProjectionError("the projector has no database connection")
        return self._leader.connection

    async def _on_leadership(self, connection: asyncpg.Connection) -> None:
        self.position = await load_position(connection, self._name)
        self.stats.connections += 1
        log.info("projector %r at position %d", self._name, self.position,
                 extra=event("projector.leader.acquired"))
