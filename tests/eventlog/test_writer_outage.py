"""The writer through database outages: nothing lost, nothing doubled, positions contiguous."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from recorder.db import migrate
from recorder.db.target import DatabaseTarget
from recorder.eventlog.writer import EventWriter
from tests.helpers import assert_log_contiguous, message_event


class PrivateServer:
    """A PostgreSQL server of the test's own (pgserver's binaries), which it may crash."""

    def __init__(self, server: Any) -> None:
        self.server = server
        info = server.get_postmaster_info()
        self.socket_dir = info.socket_dir
        self.dsn: str = server.get_uri("postgres")

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user, timeout=30)

    def crash(self) -> None:
        self._pg_ctl("-w", "stop", "-m", "immediate")  # like a power cut: no shutdown checkpoint

    def start(self) -> None:
        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}",
            "-l", str(self.server.log), "start",
        )


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    from pgserver.postgres_server import get_server

    data_dir = Path(tempfile.mkdtemp(prefix="recorder-crash-"))
    server = get_server(data_dir, cleanup_mode="delete")
    private = PrivateServer(server)
    try:
        yield private
    finally:
        # pgserver only knows the process it started; stop the restarted one ourselves.
        with contextlib.suppress(Exception):
            private._pg_ctl("-w", "stop", "-m", "fast")
        server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


async def produce(writer: EventWriter, total: int, rate: float) -> None:
    """Offer events at a steady rate, like sockets would; blocks while the queue is full."""
    started = time.monotonic()
    for sequence in range(total):
        await writer.put(message_event(f"conv-{sequence % 50}", sequence))
        ahead = started + sequence / rate - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)


@pytest.mark.slow
async def test_writer_survives_a_postgres_crash_and_restart(private_server: PrivateServer) -> None:
    target = DatabaseTarget(dsn=private_server.dsn, embedded=False)
    await migrate.upgrade(target)
    total = 12_000
    writer = EventWriter(target, queue_size=500, max_backoff_s=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    producer = asyncio.create_task(produce(writer, total, rate=4000))

    await asyncio.wait_for(writer.wait_for_head(2000), 30)
    await asyncio.to_thread(private_server.crash)
    await asyncio.sleep(0.5)  # let a commit acknowledged just before the crash be published
    head_at_crash = writer.head
    await asyncio.sleep(1.5)  # the producer fills the bounded queue and blocks meanwhile
    assert writer.queue.qsize() == 500
    assert writer.head == head_at_crash
    await asyncio.to_thread(private_server.start)

    await asyncio.wait_for(producer, 60)
    await asyncio.wait_for(writer.wait_for_head(total), 60)
    stop.set()
    await asyncio.wait_for(task, 30)

    assert writer.stats.retries >= 1
    connection = await asyncpg.connect(target.dsn)
    try:
        assert await assert_log_contiguous(connection) == total
        sequences = await connection.fetch("SELECT sequence FROM events ORDER BY sequence")
        assert [r["sequence"] for r in sequences] == list(range(total))
    finally:
        await connection.close()


async def test_writer_reconnects_when_its_connection_is_killed(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    total = 6000
    writer = EventWriter(database, max_backoff_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    producer = asyncio.create_task(produce(writer, total, rate=6000))
    for kill_at in (1000, 3000, 4500):
        await asyncio.wait_for(writer.wait_for_head(kill_at), 30)
        killed = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        assert killed >= 1
    await asyncio.wait_for(producer, 60)
    await asyncio.wait_for(writer.wait_for_head(total), 60)
    stop.set()
    await asyncio.wait_for(task, 30)
    assert writer.stats.connections >= 4  # reconnected after each kill
    assert await assert_log_contiguous(db) == total
    assert await db.fetchval("SELECT count(DISTINCT sequence) FROM events") == total
