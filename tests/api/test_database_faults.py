"""Database faults: lost or refused connections are retried once, else a 503 with Retry-After,
logged once per outage; never a 500 with a traceback. Real PostgreSQL throughout: connections
are killed with pg_terminate_backend and refused with ALLOW_CONNECTIONS false or a DROP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from recorder.db.target import DatabaseTarget
from tests.api.test_feed import append_slowly, read_events
from tests.api.test_security import assert_problem
from tests.helpers import admin
from tests.projection_helpers import CONV

Client = TestClient[web.Request, web.Application]

HANG_GUARD_S = 15.0  # only so a broken server fails the test instead of hanging it
DATABASE_URLS = ["/conversations", f"/conversations/{CONV}", f"/conversations/{CONV}/messages",
                 f"/conversations/{CONV}/events", "/events", "/events/stream", "/readyz"]
API_BACKENDS = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> pg_backend_pid()
"""


async def terminate_api_connections(db: asyncpg.Connection) -> int:
    """Kill every other connection to the test database (the API pool's); waits until gone."""
    rows = await db.fetch(f"SELECT pg_terminate_backend(pid, 5000) FROM ({API_BACKENDS}) a")
    return len(rows)


async def lock_waiter(db: asyncpg.Connection) -> int:
    """The pid of the API connection blocked on a lock `db` holds."""
    async with asyncio.timeout(HANG_GUARD_S):
        while True:
            pid = await db.fetchval(f"{API_BACKENDS} AND wait_event_type = 'Lock'")
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.01)


@pytest.fixture
async def refusing(server_dsn: str, database: DatabaseTarget) -> AsyncIterator[Any]:
    """`await refusing(True)` makes the test database refuse new connections (open ones stay;
    PostgreSQL only takes this from a connection to another database)."""
    name = urlsplit(database.dsn).path.lstrip("/")

    async def refuse(on: bool) -> None:
        await admin(server_dsn, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(not on).lower()}')

    try:
        yield refuse
    finally:
        await refuse(False)


async def assert_unavailable(response: ClientResponse) -> None:
    body = await assert_problem(response, 503)
    assert int(response.headers["Retry-After"]) >= 1
    assert "database" in body["detail"]


def outage_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "recorder.api" and r.levelno == level]


def assert_no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing at ERROR and no traceback from the API or aiohttp. (asyncpg's pool logs its own
    failures to reconnect up to min_size, with a traceback: the pool's owner configures that.)"""
    records = [r for r in caplog.records if r.name == "recorder.api" or r.name.startswith(
        "aiohttp")]
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []
    assert not any(r.exc_info for r in records)


@pytest.mark.parametrize(("url", "table"), [
    ("/conversations", "conversations"),
    (f"/conversations/{CONV}", "conversations"),
    (f"/conversations/{CONV}/messages", "conversations"),
    ("/events", "events"),
    ("/events/stream?limit=1", "events"),
])
async def test_a_connection_lost_mid_query_is_retried_on_a_fresh_one(
    client: Client, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture,
    url: str, table: str,
) -> None:
    caplog.set_level(logging.INFO)
    async with db.transaction():
        await db.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        pending = asyncio.create_task(client.get(url))
        assert await db.fetchval("SELECT pg_terminate_backend($1, 5000)", await lock_waiter(db))
    response = await pending  # the lock is gone: the retry answers
    assert response.status == 200
    if url.startswith("/events/stream"):
        assert [i for i, _ in await read_events(response, 3)] == [1, 2, 3]
        response.close()
    else:
        assert (await response.json())
    assert_no_error_logged(caplog)
    assert len(outage_lines(caplog, logging.WARNING)) == 1  # the lost connection, once
    assert len(outage_lines(caplog, logging.INFO)) == 1  # and that the database answered


async def test_a_lost_connection_that_cannot_be_replaced_is_a_503(
    client: Client, db: asyncpg.Connection, refusing: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await refusing(True)  # the pool's open connection is not affected, new ones are refused
    async with db.transaction():
        await db.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        pending = asyncio.create_task(client.get("/events"))
        assert await db.fetchval("SELECT pg_terminate_backend($1, 5000)", await lock_waiter(db))
        async with asyncio.timeout(HANG_GUARD_S):
            await assert_unavailable(await pending)
    assert_no_error_logged(caplog)


async def test_a_database_refusing_connections_is_a_503_logged_once(
    client: Client, db: asyncpg.Connection, refusing: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await refusing(True)
    assert await terminate_api_connections(db) >= 1
    for _ in range(3):
        for url in DATABASE_URLS:
            await assert_unavailable(await client.get(url))
    assert (await client.get("/livez")).status == 200  # the process itself is fine
    assert_no_error_logged(caplog)
    [warning] = outage_lines(caplog, logging.WARNING)
    assert "database" in warning.getMessage()
    assert outage_lines(caplog, logging.INFO) == []

    await refusing(False)
    assert (await client.get("/events")).status == 200
    [recovered] = outage_lines(caplog, logging.INFO)
    assert "answers again" in recovered.getMessage()

    # A query that fails for any other reason is a bug: a 500 with its traceback in the log,
    # and not an outage.
    await db.execute("ALTER TABLE events RENAME TO events_elsewhere")
    body = await assert_problem(await client.get("/events"), 500)
    assert body["detail"] == "internal error; the server log has the details"
    assert len(outage_lines(caplog, logging.WARNING)) == 1


async def test_a_dropped_database_is_a_503(
    client: Client, server_dsn: str, database: DatabaseTarget
) -> None:
    assert (await client.get("/events")).status == 200
    name = urlsplit(database.dsn).path.lstrip("/")
    await admin(server_dsn, f'DROP DATABASE "{name}" WITH (FORCE)')
    for url in DATABASE_URLS:
        await assert_unavailable(await client.get(url))


async def test_requests_racing_terminations_never_get_a_500(
    client: Client, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    stop = asyncio.Event()

    async def terminate_repeatedly() -> int:
        killed = 0
        while not stop.is_set():
            killed += len(await db.fetch(f"SELECT pg_terminate_backend(pid) FROM "
                                         f"({API_BACKENDS}) a"))
            await asyncio.sleep(0.005)
        return killed

    async def reader(url: str) -> list[ClientResponse]:
        responses = []
        for _ in range(25):
            response = await client.get(url)
            await response.read()
            responses.append(response)
        return responses

    killer = asyncio.create_task(terminate_repeatedly())
    urls = [u for u in DATABASE_URLS if "stream" not in u] * 2
    batches = await asyncio.gather(*(reader(url) for url in urls))
    stop.set()
    assert await killer > 0
    responses = [r for batch in batches for r in batch]
    assert {r.status for r in responses} <= {200, 503}
    for response in responses:
        if response.status == 503:
            await assert_unavailable(response)
    assert_no_error_logged(caplog)


async def test_an_open_stream_survives_an_outage(
    client: Client, db: asyncpg.Connection, refusing: Any, database: DatabaseTarget,
    recorded: int, caplog: pytest.LogCaptureFixture,
) -> None:
    response = await client.get("/events/stream", params={"after": str(recorded - 2)})
    assert [i for i, _ in await read_events(response, 2)] == [recorded - 1, recorded]
    await refusing(True)
    await terminate_api_connections(db)
    async with asyncio.timeout(HANG_GUARD_S):  # until a poll of the stream has failed
        while True:
            if [r for r in caplog.records if r.name == "recorder.api"
                    and r.levelno >= logging.WARNING]:
                break
            await asyncio.sleep(0.01)
    assert_no_error_logged(caplog)
    await refusing(False)
    head = await append_slowly(database, 5)
    events = await read_events(response, 5)
    assert [i for i, _ in events] == list(range(recorded + 1, head + 1))
    response.close()
    assert_no_error_logged(caplog)
