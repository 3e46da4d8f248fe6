"""A real PgBouncer in transaction pooling mode in front of the test database (Debian's
`pgbouncer`, started by the tests that use it; skipped with a reason where it is missing)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from recorder.db.target import DatabaseTarget
from tests.faults.harness import poll
from tests.helpers import free_port


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
