"""LeaderConnection on real PostgreSQL: one leader per advisory lock, the others passive."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from recorder.db.leadership import LeaderConnection
from recorder.db.target import DatabaseTarget
from tests.helpers import wait_until

LOCK_KEY = 0x7E57_1EAD

# A bigint advisory key is split into classid (high 32 bits) and objid (low 32 bits).
HOLDER = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND granted AND classid = 0 AND objid = $1::bigint::oid
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def leader(database: DatabaseTarget, name: str) -> LeaderConnection:
    return LeaderConnection(database, role=f"test {name}", lock_key=LOCK_KEY,
                            command_timeout_s=10, server_settings={"application_name": name})


async def holder(db: asyncpg.Connection) -> int | None:
    """Backend pid holding the lock, as PostgreSQL sees it."""
    pid: int | None = await db.fetchval(HOLDER, LOCK_KEY)
    return pid


async def backend_gone(db: asyncpg.Connection, application_name: str) -> None:
    """Wait (bounded) until no backend of that name is left: a backend exits asynchronously."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
    for _ in range(500):
        if await db.fetchval(query, application_name) == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"a backend named {application_name!r} is still connected")


def waiting_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum(getattr(r, "event", None) == "leader.lock.waiting" for r in caplog.records)


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="recorder")


async def test_the_first_leads_and_a_second_stays_passive_until_it_releases(
    database: DatabaseTarget, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture,
) -> None:
    first, second, stop = leader(database, "first"), leader(database, "second"), asyncio.Event()
    connection = await first.acquire(stop)
    assert connection is not None and first.is_leader
    first_pid = connection.get_server_pid()
    assert await holder(db) == first_pid
    assert await connection.fetchval("SHOW application_name") == "first"
    assert await first.acquire(stop) is connection, "a live leader keeps its connection"

    waiting = asyncio.create_task(second.acquire(stop))
    await wait_until(lambda: waiting_logged(caplog) == 1, within_s=10)
    assert not waiting.done() and not second.is_leader and second.connection is None
    assert await holder(db) == first_pid

    await first.close()
    assert not first.is_leader and connection.is_closed()
    taken = await asyncio.wait_for(waiting, 10)
    assert taken is not None and second.is_leader and second.connection is taken
    assert await holder(db) == taken.get_server_pid()
    await second.close()
    assert await holder(db) is None


async def test_a_passive_acquire_returns_none_when_stopped(
    database: DatabaseTarget, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = leader(database, "first"), leader(database, "second")
    assert await first.acquire(asyncio.Event()) is not None
    stop = asyncio.Event()
    waiting = asyncio.create_task(second.acquire(stop))
    await wait_until(lambda: waiting_logged(caplog) == 1, within_s=10)
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'second'"
    assert await db.fetchval(query) == 1, "waiting on a connection of its own"
    stop.set()
    assert await asyncio.wait_for(waiting, 10) is None
    assert not second.is_leader and second.connection is None
    await backend_gone(db, "second")  # its connection was closed, not left behind
    await first.close()


async def test_a_stopped_instance_still_takes_a_free_lock(database: DatabaseTarget) -> None:
    # The writer drains its queue after stop is set: it must still be able to commit.
    stopped = asyncio.Event()
    stopped.set()
    only = leader(database, "only")
    assert await only.acquire(stopped) is not None and only.is_leader
    await only.close()


async def test_a_killed_leader_reconnects_and_waits_if_the_standby_took_over(
    database: DatabaseTarget, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture,
) -> None:
    first, standby, stop = leader(database, "first"), leader(database, "standby"), asyncio.Event()
    connection = await first.acquire(stop)
    assert connection is not None
    waiting = asyncio.create_task(standby.acquire(stop))
    await wait_until(lambda: waiting_logged(caplog) == 1, within_s=10)

    await db.execute("SELECT pg_terminate_backend($1)", connection.get_server_pid())
    taken = await asyncio.wait_for(waiting, 10)
    assert taken is not None and await holder(db) == taken.get_server_pid()
    await wait_until(connection.is_closed, within_s=10)

    again = asyncio.create_task(first.acquire(stop))
    await wait_until(lambda: waiting_logged(caplog) == 2, within_s=10)
    assert not again.done() and not first.is_leader, "a dead connection is not leadership"
    standby.discard()  # no goodbye: the lock goes with the terminated connection
    assert not standby.is_leader and taken.is_closed()
    reconnected = await asyncio.wait_for(again, 10)
    assert reconnected is not None and reconnected is not connection
    assert await holder(db) == reconnected.get_server_pid()
    await first.close()


async def test_a_failing_on_acquired_gives_the_lock_back(
    database: DatabaseTarget, db: asyncpg.Connection,
) -> None:
    seen: list[int | None] = []

    async def on_acquired(connection: asyncpg.Connection) -> None:
        seen.append(await holder(db))
        assert connection.get_server_pid() == seen[-1], "called while holding the lock"
        raise RuntimeError("cannot read the head")

    failing = LeaderConnection(database, role="test failing", lock_key=LOCK_KEY,
                               command_timeout_s=10, on_acquired=on_acquired)
    with pytest.raises(RuntimeError, match="cannot read the head"):
        await failing.acquire(asyncio.Event())
    assert seen and seen[0] is not None
    assert not failing.is_leader and failing.connection is None
    other = leader(database, "other")
    assert await asyncio.wait_for(other.acquire(asyncio.Event()), 10) is not None
    await other.close()

