"""The lease loop of one role process: heartbeat, renew, take a fair share, give back the
surplus, and tell the users of each lease when it starts and ends.

Every `ttl_s / 3` seconds (5 s at the default 15 s):

1. heartbeat this instance's row for each of its roles;
2. renew every lease held; a lease not renewed was taken over: it ends at once;
3. shared resources (the identities, for `ingest`): each live instance ends up holding
   `floor` or `ceil` of `resources / live instances`. Below `ceil` it takes free or expired
   ones; above it, it gives the surplus back (after stopping their users); at `ceil` it gives
   one back only while another live instance holds less than `floor`. A balanced fleet moves
   nothing, so leases do not flap;
4. singletons (`projector`, `exports`, for `project`): take each when free or expired.

A lease also ends when its local deadline passes without a renewal (the database's expiry is
never earlier): a process that stalled (SIGSTOP, a long pause, a partition) stops using its
leases the moment it runs again, before any database round trip. What it still commits is
harmless by construction: appends are idempotent (dedupe keys), cursors only move forward,
and singletons check their epoch inside their own transactions (`leases.fence`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import asyncpg

from recorder.coordination.leases import Held, LeaseBook, Taken, fair_share
from recorder.db.retry import TRANSIENT_ERRORS
from recorder.logs import event

log = logging.getLogger(__name__)

#: A lease is trusted locally until this long before its database expiry could be.
SAFETY_S = 1.0
#: How long a lease's user gets to stop before the lease is given back anyway.
HANDOFF_S = 10.0


class Hold:
    """One tenure of a lease: `ended` is set when its user must stop. A user that runs for
    the tenure (`while_held`) sets `in_use`, then `done` once it stopped: giving the lease
    back waits for that, bounded by the handoff time. Users that only check the lease inside
    their transactions (the projector, exports) need no such wait."""

    def __init__(self, held: Held) -> None:
        self.held = held
        self.ended = asyncio.Event()
        self.in_use = False
        self.done = asyncio.Event()
        self.reason = ""

    async def stopped(self, within_s: float) -> None:
        if self.in_use:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), within_s)

    @property
    def resource(self) -> str:
        return self.held.resource

    @property
    def epoch(self) -> int:
        return self.held.epoch


class Coordinator:
    def __init__(
        self,
        book: LeaseBook,
        *,
        roles: Sequence[str],
        host: str,
        pid: int,
        shared: Sequence[str] = (),
        shared_role: str = "ingest",
        singletons: Sequence[str] = (),
        handoff_s: float = HANDOFF_S,
    ) -> None:
        self.book = book
        self._roles = list(roles)
        self._host = host
        self._pid = pid
        self.shared = list(shared)
        self._shared_role = shared_role
        self.singletons = list(singletons)
        self._handoff_s = handoff_s
        self.holds: dict[str, Hold] = {}
        self._releasing: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self.rounds = 0
        self.failed_rounds = 0
        self.takeovers = 0  # leases taken after their holder's expired
        self.live_instances = 0
        self.share = 0

    @property
    def instance(self) -> str:
        return self.book.instance

    @property
    def interval_s(self) -> float:
        return self.book.ttl_s / 3

    # -- for the users of leases -------------------------------------------------------------------

    def holding(self, resource: str) -> Hold | None:
        """The current tenure of `resource`, if held and locally valid."""
        hold = self.holds.get(resource)
        if hold is None or hold.ended.is_set() or not hold.held.valid():
            return None
        return hold

    async def wait_for(self, resource: str, stop: asyncio.Event) -> Hold | None:
        """The next tenure of `resource`; None once `stop` is set."""
        while not stop.is_set():
            hold = self.holding(resource)
            if hold is not None:
                return hold
            changed = self._changed
            waiters = {asyncio.ensure_future(changed.wait()), asyncio.ensure_future(stop.wait())}
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        return None

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.book.ensure([*self.shared, *self.singletons])
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            log.warning("coordination: cannot reach the lease table yet (%s)",
                        type(exc).__name__, extra=event("coordination.round.failed"))
        next_round = time.monotonic()
        try:
            while not stop.is_set():
                self.expire_locally()
                now = time.monotonic()
                if now >= next_round:
                    await self.round()
                    next_round = time.monotonic() + self.interval_s
                deadlines = [h.held.valid_until for h in self.holds.values()]
                wake = min([next_round, *deadlines])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, wake - time.monotonic()))
        finally:
            await self._give_everything_back()

    def expire_locally(self) -> None:
        """End every hold whose local deadline passed (no round trip: a stalled process must
        stop using its leases before it does anything else)."""
        now = time.monotonic()
        for hold in list(self.holds.values()):
            if not hold.held.valid(now):
                self._end(hold, "expired before it could be renewed")

    async def round(self) -> None:
        """One heartbeat: renew, then balance. Failures are logged; the next round retries,
        and holds end by their local deadline if renewals keep failing."""
        try:
            await self._round()
            self.rounds += 1
        except (*TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
            self.failed_rounds += 1
            log.warning("coordination round failed (%s: %s); leases stay valid until their "
                        "deadline", type(exc).__name__, exc,
                        extra=event("coordination.round.failed"))

    async def _round(self) -> None:
        sent = time.monotonic()
        for role in self._roles:
            await self.book.heartbeat(role, self._host, self._pid)
        kept = await self.book.renew([h.held for h in self.holds.values()])
        for hold in list(self.holds.values()):
            if hold.resource in kept:
                hold.held.valid_until = sent + self.book.ttl_s - SAFETY_S
            else:
                self._end(hold, "taken over by another instance")
        if self.rounds == 0:
            await self._bury_the_dead()
        if self.shared:
            await self._balance(sent)
        for resource in self.singletons:
            if resource not in self.holds:
                self._start(await self.book.acquire([resource], 1), sent)

    async def _bury_the_dead(self) -> None:
        """At start: instances on this host whose process is gone (`kill -9`, a crash, the
        previous run of this service under another pid) hold leases nobody renews. Expire
        them now rather than at their expiry, so a restart records again within seconds."""
        mine = [*self.shared, *self.singletons]
        for name, role, pid in await self.book.same_host_instances(self._host):
            if role in self._roles and not _alive(pid):
                await self.book.bury(name, role, pid, mine)
                log.info("instance %s (%s, pid %d) on this host is gone; its leases expire now",
                         name, role, pid, extra=event("coordination.instance.gone"))

    async def _balance(self, sent: float) -> None:
        live = await self.book.live_instances(self._shared_role)
        if self.instance not in live:
            live.append(self.instance)
        self.live_instances = len(live)
        self.share = ceiling = fair_share(len(self.shared), len(live))
        floor = len(self.shared) // len(live)
        mine = [r for r in self.shared if r in self.holds]
        surplus = 0
        if len(mine) < ceiling:
            free = [r for r in self.shared if r not in self.holds]
            self._start(await self.book.acquire(free, ceiling - len(mine)), sent)
        elif len(mine) > ceiling:
            surplus = len(mine) - ceiling
        elif floor < ceiling:
            counts = await self.book.holder_counts(self.shared)
            if any(counts.get(name, 0) < floor for name in live if name != self.instance):
                surplus = 1
        # Those this instance would reach for last go first.
        for resource in sorted(mine, key=lambda r: _preference(r, self.instance))[-surplus:]:
            if surplus:
                await self._give_back(self.holds[resource], "rebalance")

    def _start(self, taken: Sequence[Taken], sent: float) -> None:
        for lease in taken:
            self.holds[lease.resource] = Hold(
                Held(lease.resource, lease.epoch, sent + self.book.ttl_s - SAFETY_S))
            if lease.expired:
                self.takeovers += 1
            log.info("lease %s taken by %s (epoch %d)%s", lease.resource, self.instance,
                     lease.epoch, f" from {lease.previous}, whose lease expired"
                     if lease.expired and lease.previous else "",
                     extra=event("coordination.lease.acquired"))
        if taken:
            self._notify()

    def _end(self, hold: Hold, reason: str) -> None:
        if self.holds.get(hold.resource) is hold:
            del self.holds[hold.resource]
        if not hold.ended.is_set():
            hold.reason = reason
            hold.ended.set()
            log.warning("lease %s (epoch %d) ended for %s: %s", hold.resource, hold.epoch,
                        self.instance, reason, extra=event("coordination.lease.ended"))
            self._notify()

    async def _give_back(self, hold: Hold, reason: str) -> None:
        """Stop the user first, then free the lease for the next taker. No longer renewed,
        it also frees itself at its expiry should the user take longer than the handoff."""
        self._end(hold, f"given back ({reason})")
        if not hold.in_use or hold.done.is_set() or self._handoff_s <= 0:
            await self._release(hold, reason)
            return
        task = asyncio.create_task(self._release_when_done(hold, reason))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release_when_done(self, hold: Hold, reason: str) -> None:
        await hold.stopped(self._handoff_s)
        with contextlib.suppress(*TRANSIENT_ERRORS, asyncpg.PostgresError):
            await self._release(hold, reason)

    async def _release(self, hold: Hold, reason: str) -> None:
        if await self.book.release(hold.held, reason):
            log.info("lease %s given back by %s (%s)", hold.resource, self.instance, reason,
                     extra=event("coordination.lease.released"))

    async def _give_everything_back(self) -> None:
        holds = list(self.holds.values())
        for hold in holds:
            self._end(hold, "stopping")
        await asyncio.gather(*(hold.stopped(self._handoff_s) for hold in holds))
        for hold in holds:
            with contextlib.suppress(*TRANSIENT_ERRORS, asyncpg.PostgresError):
                await self._release(hold, "stopping")
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
        for role in self._roles:
            with contextlib.suppress(*TRANSIENT_ERRORS, asyncpg.PostgresError):
                await self.book.mark_stopped(role)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def while_held(
    coordinator: Coordinator, resource: str,
    component: Callable[[asyncio.Event], Awaitable[None]],
) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    """A supervised component that runs `component` during each tenure of `resource`: it
    starts when the lease is taken and is told to stop the moment the lease ends."""

    async def run(stop: asyncio.Event) -> None:
        while not stop.is_set():
            hold = await coordinator.wait_for(resource, stop)
            if hold is None:
                return
            tenure = asyncio.Event()

            async def end_with_lease(hold: Hold = hold, tenure: asyncio.Event = tenure) -> None:
                waiters = {asyncio.ensure_future(stop.wait()),
                           asyncio.ensure_future(hold.ended.wait())}
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                tenure.set()

            watcher = asyncio.create_task(end_with_lease())
            hold.in_use = True
            try:
                await component(tenure)
            finally:
                watcher.cancel()
                hold.done.set()

    return run


def _alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _preference(resource: str, instance: str) -> str:
    """The order ACQUIRE reaches for resources (md5 of resource and taker), in Python."""
    return hashlib.md5((resource + instance).encode(), usedforsecurity=False).hexdigest()
