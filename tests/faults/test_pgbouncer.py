"""Many instances through a real PgBouncer in transaction pooling mode (Debian's `pgbouncer`,
started here when installed): no session state is relied on. Two instances share the
identities, one is killed with `kill -9`, an export job runs by hand, and the log is exact."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from recorder.db.target import DatabaseTarget
from recorder.simulator import Simulator
from tests.faults import oracle
from tests.faults.harness import (
    ACCOUNT,
    DaemonProcess,
    head_reaches,
    poll,
    token_file_identities,
)
from tests.faults.test_instances import LEASE_TTL_S, TAKEOVER_BUDGET_S, all_held_by, holders
from tests.faults.test_process_faults import config_file
from tests.helpers import free_port

pytestmark = pytest.mark.slow

IDENTITIES = 12


def pgbouncer_setup(database: DatabaseTarget, directory: Path) -> tuple[list[str], str]:
    """The command that runs a transaction-pooling PgBouncer in front of the test database,
    and the URL through it."""
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if binary is None:
        pytest.skip("pgbouncer is not installed (Debian package `pgbouncer`)")
    url = urlsplit(database.dsn)
    name = url.path.lstrip("/")
    socket_dir = parse_qs(url.query).get("host", [None])[0]
    run_as = "nobody"  # PgBouncer will not run as root
    if socket_dir is not None:  # the embedded server: a unix socket in its data directory
        port = next(Path(socket_dir).glob(".s.PGSQL.*")).name.rsplit(".", 1)[1]
        server = f"host={socket_dir} port={port}"
        run_as = Path(socket_dir).owner()  # the only user that may enter it
    else:
        server = f"host={url.hostname} port={url.port or 5432}"
    user = url.username or "postgres"
    directory.chmod(0o777)  # a directory of its own under /tmp, open to that user
    listen = free_port()
    (directory / "users.txt").write_text(f'"{user}" ""\n')
    (directory / "pgbouncer.ini").write_text(f"""
[databases]
{name} = {server} dbname={name}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {directory / "users.txt"}
pool_mode = transaction
default_pool_size = 8
max_client_conn = 500
logfile = {directory / "pgbouncer.log"}
""")
    for path in directory.iterdir():
        path.chmod(0o666)
    command = [binary, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", run_as]
    return command, f"postgresql://{user}@127.0.0.1:{listen}/{name}"


@contextlib.asynccontextmanager
async def pgbouncer(database: DatabaseTarget, directory: Path) -> AsyncIterator[str]:
    """A running PgBouncer in front of the test database; yields the URL through it."""
    command, bounced = pgbouncer_setup(database, directory)
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.STDOUT)
    try:
        async def up() -> bool:
            try:
                connection = await asyncpg.connect(bounced, statement_cache_size=0, timeout=2)
            except (OSError, asyncpg.PostgresError):
                return False
            await connection.close()
            return True

        await poll(up, "pgbouncer did not come up", within_s=20)
        yield bounced
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)


async def test_two_instances_through_pgbouncer_transaction_pooling(
    database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    bouncer_dir = Path(tempfile.mkdtemp(prefix="recorder-pgbouncer-"))
    async with Simulator(account=ACCOUNT, seed=153) as sim, pgbouncer(
            database, bouncer_dir) as bounced:
        consumers = [sim.new_consumer() for _ in range(IDENTITIES)]
        exports = tmp_path / "exports"
        config = config_file(tmp_path / "recorder.toml",
                             token_file_identities(sim, consumers, tmp_path))
        config.write_text(config.read_text() + f"""
[[exports]]
name = "hourly"
kind = "events"
format = "jsonl"
directory = "{exports}"
schedule = "1h"
""")
        daemons = {}
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            daemons[name] = DaemonProcess(
                {
                    "RECORDER_DATABASE_URL": bounced,
                    "RECORDER_DATABASE_POOLING": "transaction",
                    "RECORDER_ACCOUNT": ACCOUNT,
                    "RECORDER_UMS_URL": sim.ws_url,
                    "RECORDER_CONFIG": str(config),
                    "RECORDER_INSTANCE": name,
                    "RECORDER_LEASE_TTL_S": str(LEASE_TTL_S),
                    "RECORDER_LOG_LEVEL": "info",
                },
                tmp_path / name / "daemon.log",
            )
        traffic = sim.start_traffic(consumers, 3, rate=150, total_events=3000)
        try:
            for daemon in daemons.values():
                await daemon.start()
            await all_held_by(db, {"a", "b"}, "two instances never shared the identities",
                              identities=IDENTITIES)
            await poll(head_reaches(db, 300), "nothing recorded through pgbouncer", within_s=30)
            victim = await db.fetchval(
                "SELECT holder FROM leases WHERE resource = 'projector' AND expires_at > now()")
            survivor = ({"a", "b"} - {victim}).pop()
            await daemons[victim].kill()
            killed = time.monotonic()
            await all_held_by(db, {survivor}, "the survivor never took over",
                              within_s=TAKEOVER_BUDGET_S + 10, identities=IDENTITIES)
            record_property("pgbouncer_takeover_s", round(time.monotonic() - killed, 1))
            assert len(await holders(db)) == IDENTITIES
            await asyncio.wait_for(traffic, 90)
            await oracle.wait_until_recorded(sim, consumers, db, within_s=60)

            # An export job by hand through the pooler: locked by a lease, not a session lock.
            env = dict(daemons[survivor]._env)
            done = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "recorder", "export", "hourly", env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            output, _ = await asyncio.wait_for(done.communicate(), 120)
            assert done.returncode == 0, output.decode()[-3000:]
            assert list(exports.glob("*.jsonl*")), output.decode()[-3000:]
            lease = await db.fetchrow(
                "SELECT holder, expires_at <= now() AS free FROM leases "
                "WHERE resource = 'export-job:hourly'")
            assert lease is not None and lease["holder"] is None and lease["free"], dict(lease)
            assert await daemons[survivor].terminate() == 0
        finally:
            for daemon in daemons.values():
                if daemon.running:
                    await daemon.terminate()
        assert "Traceback" not in daemons[survivor].output(), daemons[survivor].output()[-3000:]
        await oracle.assert_oracle(sim, consumers, database, db)
