"""Leases on real PostgreSQL: taking, renewing, expiry and takeover with the fencing epoch,
fair shares across instances, and a stalled holder that wakes after losing its lease."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from recorder.coordination.coordinator import Coordinator
from recorder.coordination.leases import Held, LeaseBook, fair_share, fence, overview
from recorder.db.target import DatabaseTarget


@pytest.fixture
async def pool(database: DatabaseTarget) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database.dsn, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


def test_fair_shares_cover_every_resource() -> None:
    assert [fair_share(10, n) for n in (0, 1, 2, 3, 4, 10, 11)] == [10, 10, 5, 4, 3, 1, 1]
    for resources in range(0, 40):
        for instances in range(1, 8):
            assert fair_share(resources, instances) * instances >= resources


async def test_take_renew_expire_take_over_and_fence(pool: asyncpg.Pool) -> None:
    one, two = LeaseBook(pool, "one", ttl_s=0.6), LeaseBook(pool, "two", ttl_s=0.6)
    await one.ensure(["identity:a"])
    (taken,) = await one.acquire(["identity:a"], 5)
    assert (taken.resource, taken.epoch, taken.previous, taken.expired) == (
        "identity:a", 1, None, False)
    assert await two.acquire(["identity:a"], 5) == [], "held and not expired"
    mine = Held("identity:a", taken.epoch, time.monotonic() + 0.5)
    assert await one.renew([mine]) == {"identity:a"}

    await asyncio.sleep(0.8)  # one stalls past its lease
    (over,) = await two.acquire(["identity:a"], 5)
    assert (over.epoch, over.previous, over.expired) == (2, "one", True)
    assert await one.renew([mine]) == set(), "the old epoch renews nothing"
    theirs = Held("identity:a", over.epoch, time.monotonic() + 0.5)
    async with pool.acquire() as connection, connection.transaction():
        assert not await fence(connection, "one", mine)
        assert await fence(connection, "two", theirs)
    assert not await one.release(mine, "stopping"), "not one's to give back"
    assert await two.release(theirs, "rebalance")
    (again,) = await one.acquire(["identity:a"], 5)
    assert (again.epoch, again.previous, again.expired) == (3, None, False)
    seen = await overview(pool, ttl_s=0.6)
    assert [(m["from_instance"], m["to_instance"], m["reason"]) for m in seen["moves"]] == [
        (None, "one", "free"), ("two", None, "rebalance"), ("one", "two", "expired"),
        (None, "one", "free"),
    ]
    assert [(lease["holder"], lease["epoch"]) for lease in seen["leases"]] == [("one", 3)]


@contextlib.asynccontextmanager
async def instances(pool: asyncpg.Pool, names: list[str], resources: list[str],
                    ttl_s: float = 3.0) -> AsyncIterator[dict[str, Coordinator]]:
    coordinators = {name: instance(pool, name, resources, ttl_s) for name in names}
    for coordinator in coordinators.values():  # all up before the first balancing round
        await coordinator.book.heartbeat("ingest", "test", 1)
    await next(iter(coordinators.values())).book.ensure(resources)
    yield coordinators


def instance(pool: asyncpg.Pool, name: str, resources: list[str],
             ttl_s: float = 3.0) -> Coordinator:
    # No users here: a lease given back is released at once.
    return Coordinator(LeaseBook(pool, name, ttl_s), roles=["ingest"], host="test", pid=1,
                       shared=resources, handoff_s=0)


def held_by(coordinators: dict[str, Coordinator]) -> dict[str, set[str]]:
    return {name: set(c.holds) for name, c in coordinators.items()}


async def rounds(coordinators: dict[str, Coordinator], count: int) -> None:
    for _ in range(count):
        for coordinator in coordinators.values():
            await coordinator.round()


async def test_instances_divide_the_identities_and_rebalance_without_flapping(
    pool: asyncpg.Pool,
) -> None:
    resources = [f"identity:c{n}" for n in range(10)]
    async with instances(pool, ["a", "b", "c"], resources) as three:
        await rounds(three, 3)
        shares = held_by(three)
        assert sorted(len(s) for s in shares.values()) == [3, 3, 4]
        assert set().union(*shares.values()) == set(resources), "every identity held"
        assert sum(len(s) for s in shares.values()) == 10, "none held twice"
        await rounds(three, 3)
        assert held_by(three) == shares, "a stable fleet moves nothing"

        four = dict(three)
        four["d"] = instance(pool, "d", resources)
        await rounds(four, 3)
        after = held_by(four)
        assert sorted(len(s) for s in after.values()) == [2, 2, 3, 3]
        assert set().union(*after.values()) == set(resources)
        moved = sum(len(shares[n] - after[n]) for n in shares)
        assert 2 <= moved <= 3, "the newcomer's share, give or take the one at the ceiling"
        await rounds(four, 3)
        assert held_by(four) == after, "balanced: nothing moves any more"


async def test_a_stalled_instance_stops_using_its_lease_before_anything_else(
    pool: asyncpg.Pool,
) -> None:
    resources = ["identity:x"]
    async with instances(pool, ["a", "b"], resources, ttl_s=0.9) as pair:
        await pair["a"].round()
        hold = pair["a"].holds["identity:x"]
        await asyncio.sleep(1.0)  # a stalls (no rounds) past its lease
        pair["a"].expire_locally()  # the first thing it does when it runs again
        assert hold.ended.is_set() and "expired" in hold.reason
        assert pair["a"].holding("identity:x") is None
        await pair["b"].round()
        assert set(pair["b"].holds) == {"identity:x"} and pair["b"].takeovers == 1
        async with pool.acquire() as connection, connection.transaction():
            assert not await fence(connection, "a", hold.held), "its old epoch is fenced"


async def test_a_lease_taken_over_while_its_holder_slept_ends_at_its_next_round(
    pool: asyncpg.Pool,
) -> None:
    async with instances(pool, ["a", "b"], ["identity:y"], ttl_s=0.9) as pair:
        await pair["a"].round()
        hold = pair["a"].holds["identity:y"]
        await asyncio.sleep(1.0)
        await pair["b"].round()  # b takes it over before a runs again
        hold.held.valid_until = time.monotonic() + 5  # as if a's clock had not noticed
        await pair["a"].round()
        assert hold.ended.is_set() and hold.reason == "taken over by another instance"
        assert pair["a"].holds == {} and set(pair["b"].holds) == {"identity:y"}


async def test_stopping_gives_everything_back_at_once(pool: asyncpg.Pool) -> None:
    async with instances(pool, ["a", "b"], ["identity:p", "identity:q"]) as pair:
        stop = asyncio.Event()
        task = asyncio.create_task(pair["a"].run(stop))
        hold = await asyncio.wait_for(pair["a"].wait_for("identity:p", stop), 5)
        assert hold is not None
        await asyncio.wait_for(pair["a"].wait_for("identity:q", stop), 5)
        hold.done.set()
        pair["a"].holds["identity:q"].done.set()
        stop.set()
        await asyncio.wait_for(task, 5)
        assert hold.ended.is_set() and hold.reason == "stopping"
        await pair["b"].round()  # no waiting for expiry: both are free already
        assert set(pair["b"].holds) == {"identity:p", "identity:q"}
        seen = await overview(pool, ttl_s=3.0)
        a = [i for i in seen["instances"] if i["name"] == "a"]
        assert a and not a[0]["live"] and a[0]["stopped_at"] is not None


async def test_a_restart_takes_its_leases_back_without_waiting_for_expiry(
    pool: asyncpg.Pool,
) -> None:
    """A role process restarted under the same instance name, and an instance on this host
    whose process is gone (`kill -9`, then a new pid): their leases are taken at once."""
    resources = ["identity:r", "identity:s"]
    before = instance(pool, "a", ["identity:r"], ttl_s=60)
    await before.book.ensure(resources)
    await before.book.heartbeat("ingest", "test", 1)
    await before.round()
    assert set(before.holds) == {"identity:r"}
    again = instance(pool, "a", ["identity:r"], ttl_s=60)  # the restarted process
    await again.round()
    assert set(again.holds) == {"identity:r"} and again.holds["identity:r"].epoch == 2

    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()  # its pid is no process any more
    dead = LeaseBook(pool, "z", 60)
    await dead.heartbeat("ingest", socket.gethostname(), gone.pid)
    assert len(await dead.acquire(["identity:s"], 1)) == 1
    alive = LeaseBook(pool, "y", 60)
    await alive.heartbeat("ingest", socket.gethostname(), os.getpid())  # this process: alive
    newcomer = Coordinator(LeaseBook(pool, "b", 60), roles=["ingest"], host=socket.gethostname(),
                           pid=os.getpid(), shared=["identity:s"], handoff_s=0)
    await newcomer.round()
    assert set(newcomer.holds) == {"identity:s"}, "z's process is gone: no 60 s wait"
    seen = await overview(pool, ttl_s=60)
    states = {(i["name"], i["stopped_at"] is not None) for i in seen["instances"]}
    assert ("z", True) in states and ("y", False) in states
