"""Leases in PostgreSQL: who holds which shared resource, with a fencing epoch.

A resource is a name: `identity:<name>` for each configured consumer identity, `projector`
and `exports` for the singletons. A lease is held until its expiry (the database's clock),
renewed by heartbeat; an expired lease may be taken by anyone, which raises its epoch. The
epoch is the fence: a holder that stalled and lost its lease still believes its old epoch,
and every check against the row (renewal, `FENCE` inside a singleton's transaction) fails.

`LeaseBook` is the statements, one call each; the policy (how many to hold, when to give
one back) is `recorder.coordination.coordinator`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from recorder.coordination import sql

IDENTITY_PREFIX = "identity:"
PROJECTOR = "projector"
EXPORTS = "exports"


def identity_resource(name: str) -> str:
    return IDENTITY_PREFIX + name


@dataclasses.dataclass
class Taken:
    """A lease just acquired: its epoch, and from whom (None: it was free)."""

    resource: str
    epoch: int
    previous: str | None
    expired: bool


@dataclasses.dataclass
class Held:
    """A lease this process holds. `valid_until` is a monotonic deadline on this host, set
    before each renewal was sent: the database's expiry is at least as late, so a holder that
    trusts its lease only until then never trusts it longer than the database does."""

    resource: str
    epoch: int
    valid_until: float

    def valid(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.valid_until


def fair_share(resources: int, live_instances: int) -> int:
    """The most of `resources` one of `live_instances` holds: the ceiling, so that the
    shares always cover every resource. Each holds this or one less once balanced."""
    return math.ceil(resources / max(1, live_instances))


class LeaseBook:
    """The lease statements for one instance name, over a pool (one statement per call)."""

    def __init__(self, pool: asyncpg.Pool | asyncpg.Connection, instance: str,
                 ttl_s: float) -> None:
        self._pool = pool
        self.instance = instance
        self.ttl_s = ttl_s

    async def heartbeat(self, role: str, host: str, pid: int) -> None:
        await self._pool.execute(sql.HEARTBEAT, self.instance, role, host, pid)

    async def mark_stopped(self, role: str) -> None:
        await self._pool.execute(sql.MARK_STOPPED, self.instance, role)

    async def live_instances(self, role: str) -> list[str]:
        return [r[0] for r in await self._pool.fetch(sql.LIVE_INSTANCES, self.ttl_s, role)]

    async def same_host_instances(self, host: str) -> list[tuple[str, str, int]]:
        rows = await self._pool.fetch(sql.SAME_HOST_INSTANCES, host, self.instance)
        return [(r["name"], r["role"], r["pid"]) for r in rows]

    async def bury(self, name: str, role: str, pid: int, resources: Sequence[str]) -> None:
        """`name`'s `role` process (`pid`) is gone: mark it stopped and expire its leases of
        these resources now, instead of waiting out their expiry."""
        await self._pool.execute(sql.BURY, name, role, pid, list(resources))

    async def holder_counts(self, resources: Sequence[str]) -> dict[str, int]:
        rows = await self._pool.fetch(sql.HOLDER_COUNTS, list(resources))
        return {r["holder"]: r["held"] for r in rows}

    async def ensure(self, resources: Sequence[str]) -> None:
        await self._pool.execute(sql.ENSURE_RESOURCES, list(resources))

    async def renew(self, held: Sequence[Held]) -> set[str]:
        """Renew these leases; the resources still ours (the rest were taken over)."""
        if not held:
            return set()
        rows = await self._pool.fetch(
            sql.RENEW, self.instance, [h.resource for h in held], [h.epoch for h in held],
            self.ttl_s)
        return {r[0] for r in rows}

    async def acquire(self, resources: Sequence[str], limit: int) -> list[Taken]:
        """Take up to `limit` of these that are free or expired."""
        if limit <= 0 or not resources:
            return []
        rows = await self._pool.fetch(
            sql.ACQUIRE, self.instance, list(resources), limit, self.ttl_s)
        return [Taken(r["resource"], int(r["epoch"]), r["previous"], bool(r["expired"]))
                for r in rows]

    async def release(self, held: Held, reason: str) -> bool:
        """Give a lease back at once; False if it was no longer ours."""
        found = await self._pool.fetchval(
            sql.RELEASE, self.instance, held.resource, held.epoch, reason)
        return found is not None

    async def forget_old_moves(self, days: int = 7) -> None:
        await self._pool.execute(sql.FORGET_OLD_MOVES, days)


async def fence(connection: asyncpg.Connection, instance: str, held: Held) -> bool:
    """Inside the caller's transaction: is the lease still ours at this epoch? Holds the row
    (FOR SHARE) until the transaction ends, so a takeover waits for it."""
    return await connection.fetchval(sql.FENCE, held.resource, instance, held.epoch) is not None


async def overview(pool: Any, ttl_s: float, moves: int = 20) -> dict[str, Any]:
    """Instances, leases and the latest lease moves, for `recorder status`."""
    instances = await pool.fetch(sql.INSTANCES, ttl_s)
    leases = await pool.fetch(sql.LEASES)
    recent = await pool.fetch(sql.RECENT_MOVES, moves)
    return {
        "instances": [dict(r) for r in instances],
        "leases": [dict(r) for r in leases],
        "moves": [dict(r) for r in recent],
    }
