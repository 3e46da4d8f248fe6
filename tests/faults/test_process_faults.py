"""Faults of the process and of its database: `kill -9` of the daemon mid-stream, and
PostgreSQL crashing and coming back mid-stream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from recorder.config import ConsumerIdentity
from recorder.db import migrate
from recorder.db.target import DatabaseTarget
from recorder.simulator import Simulator
from tests.eventlog.test_writer_outage import PrivateServer
from tests.faults import oracle
from tests.faults.harness import (
    ACCOUNT,
    DaemonProcess,
    head_reaches,
    log_head,
    next_connection_id,
    poll,
    running_daemon,
    settings_for,
    static_identities,
    token_file_identities,
)

pytestmark = pytest.mark.slow

CURSORS = "SELECT dialog_id, last_sequence FROM dialog_cursors"
FIRST_COMMIT_AFTER = """
SELECT extract(epoch FROM min(recorded_at))::double precision FROM events WHERE position > $1
"""


def config_file(path: Path, identities: list[ConsumerIdentity]) -> Path:
    """A TOML file with one [[consumers]] table per identity (each reading a token file)."""
    tables = [
        f'[[consumers]]\nname = "{identity.name}"\njwt_file = "{identity.jwt_file}"\n'
        for identity in identities
    ]
    path.write_text("\n".join(tables), encoding="utf-8")
    return path


def model_changes(sim: Simulator) -> int:
    """How many changes the simulator's model has made so far (events, typing, states)."""
    return len(sim.history)


def first_subscriptions(sim: Simulator, from_connection: int) -> dict[str, int]:
    """dialog id -> `fromSeq` of its first SubscribeMessagingEvents on the given connections."""
    first: dict[str, int] = {}
    for received in sim.received:
        frame = received.frame
        if (
            received.connection_id >= from_connection
            and isinstance(frame, dict)
            and frame.get("type") == "ms.SubscribeMessagingEvents"
        ):
            first.setdefault(frame["body"]["dialogId"], frame["body"]["fromSeq"])
    return first


async def kill_and_restart(daemon: DaemonProcess, sim: Simulator, db: asyncpg.Connection) -> float:
    """`kill -9` now, let events pile up upstream, start again; check that every dialog with a
    durable cursor is resubscribed from it. Returns seconds from the restart to the first
    newly committed event."""
    await daemon.kill()
    head = await log_head(db)
    cursors = {row["dialog_id"]: row["last_sequence"] for row in await db.fetch(CURSORS)}
    assert cursors, "no cursor was durable at the kill"
    changes = model_changes(sim)
    await poll(lambda: model_changes(sim) >= changes + 300,
               "the simulator made no events while the daemon was down")
    first_new_connection = next_connection_id(sim)

    restarted_at = await daemon.start()
    await poll(head_reaches(db, head + 1), "no event committed after the restart")
    ingesting_after: float = await db.fetchval(FIRST_COMMIT_AFTER, head) - restarted_at
    print(f"\nkill -9 at head {head}; restart to the first newly committed event: "
          f"{ingesting_after:.3f} s (budget 2 s)")

    await poll(lambda: first_subscriptions(sim, first_new_connection).keys() >= cursors.keys(),
               "the restarted daemon did not resubscribe every dialog it had a cursor for")
    resumed = first_subscriptions(sim, first_new_connection)
    wrong = {
        dialog: (resumed[dialog], sequence + 1)
        for dialog, sequence in cursors.items()
        if resumed[dialog] != sequence + 1
    }
    assert not wrong, f"not resubscribed from the durable cursor (fromSeq, want): {wrong}"
    return ingesting_after


async def test_kill_9_mid_stream_then_restart_resumes_from_durable_cursors(
    database: DatabaseTarget,
    db: asyncpg.Connection,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    async with Simulator(account=ACCOUNT, seed=106) as sim:
        consumers = [sim.new_consumer() for _ in range(4)]
        config = config_file(tmp_path / "recorder.toml",
                             token_file_identities(sim, consumers, tmp_path))
        daemon = DaemonProcess(
            {
                "RECORDER_DATABASE_URL": database.dsn,
                "RECORDER_ACCOUNT": ACCOUNT,
                "RECORDER_UMS_URL": sim.ws_url, "RECORDER_CSDS_URL": sim.http_url,
                "RECORDER_CONFIG": str(config),
                "RECORDER_LOG_LEVEL": "info",
            },
            tmp_path / "daemon.log",
        )
        traffic = sim.start_traffic(consumers, 3, rate=400, total_events=5000)
        await daemon.start()
        try:
            await poll(head_reaches(db, 1000), "the daemon never recorded", within_s=30)
            # Twice: the second time soon after the first restart resubscribed.
            for round_ in range(2):
                seconds = await kill_and_restart(daemon, sim, db)
                record_property(f"kill_9_restart_to_ingest_s_{round_ + 1}", round(seconds, 3))
            await asyncio.wait_for(traffic, 60)
            await oracle.wait_until_recorded(sim, consumers, db)
            code = await daemon.terminate()
        finally:
            if daemon.running:
                await daemon.terminate()

        output = daemon.output()
        assert code == 0, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        await oracle.assert_oracle(sim, consumers, database, db)


async def test_postgres_crash_and_restart_mid_stream(private_server: PrivateServer) -> None:
    target = DatabaseTarget(dsn=private_server.dsn, embedded=False)
    await migrate.upgrade(target)
    async with Simulator(account=ACCOUNT, seed=107) as sim:
        consumers = [sim.new_consumer() for _ in range(4)]
        settings = settings_for(sim, static_identities(sim, consumers), queue_size=200)
        async with running_daemon(settings, target) as daemon:
            traffic = sim.start_traffic(consumers, 3, rate=500, total_events=4000)
            db = await asyncpg.connect(target.dsn)
            await poll(head_reaches(db, 500), "the daemon never recorded")
            await db.close()

            await asyncio.to_thread(private_server.crash)
            changes_at_crash = model_changes(sim)
            queue = daemon.app.writer.queue
            await poll(queue.full, "the queue never filled: no backpressure")
            await poll(lambda: model_changes(sim) >= changes_at_crash + 500,
                       "the simulator made no events during the outage")
            assert queue.full(), "receivers went on queueing while the database was down"
            assert daemon.running, "the daemon exited while the database was down"
            await asyncio.to_thread(private_server.start)

            await asyncio.wait_for(traffic, 60)
            db = await asyncpg.connect(target.dsn)
            try:
                await oracle.wait_until_recorded(sim, consumers, db)
                code = await daemon.stop()
                assert code == 0
                assert daemon.app.writer.stats.retries >= 1
                await oracle.assert_oracle(sim, consumers, target, db)
            finally:
                await db.close()


async def test_a_session_opened_during_a_postgres_outage_is_in_sessions(
    private_server: PrivateServer,
) -> None:
    target = DatabaseTarget(dsn=private_server.dsn, embedded=False)
    await migrate.upgrade(target)
    async with Simulator(account=ACCOUNT, seed=109) as sim:
        busy = [sim.new_consumer() for _ in range(2)]
        quiet = sim.new_consumer()  # no traffic yet: its reader is not held by backpressure
        consumers = [*busy, quiet]
        settings = settings_for(sim, static_identities(sim, consumers), queue_size=200)
        async with running_daemon(settings, target) as daemon:
            quiet_client = daemon.app.clients[-1]
            traffic = sim.start_traffic(busy, 3, rate=500, total_events=2000)
            db = await asyncpg.connect(target.dsn)
            await poll(head_reaches(db, 300), "the daemon never recorded")
            await db.close()

            await asyncio.to_thread(private_server.crash)
            await poll(daemon.app.writer.queue.full, "the queue never filled")
            connections = quiet_client.connections
            await sim.close_connections(1011, "network blip")  # while the database is down
            await poll(lambda: quiet_client.connections > connections,
                       "the quiet identity never reconnected")
            assert quiet_client.connection is not None
            session = str(quiet_client.connection.session_id)
            await asyncio.to_thread(private_server.start)

            await asyncio.wait_for(traffic, 60)
            await asyncio.wait_for(sim.start_traffic([quiet], 1, rate=500, total_events=50), 30)
            db = await asyncpg.connect(target.dsn)
            try:
                await oracle.wait_until_recorded(sim, consumers, db)
                assert await daemon.stop() == 0
                delivered = await db.fetchval(
                    "SELECT count(*) FROM events WHERE session_id = $1::uuid", session
                )
                assert delivered > 0, "the session opened during the outage delivered nothing"
                row = await db.fetchrow(
                    "SELECT closed_at FROM sessions WHERE session_id = $1::uuid", session
                )
                assert row is not None, f"{delivered} events name session {session}, " \
                    "which `sessions` does not have"
                await oracle.assert_oracle(sim, consumers, target, db)
            finally:
                await db.close()
