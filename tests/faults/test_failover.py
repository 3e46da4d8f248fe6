"""Database failover: a primary and a synchronous streaming standby made from the PostgreSQL
binaries on this machine (the embedded server's), the recorder given both hosts with
`target_session_attrs=read-write`; mid-stream the standby is promoted and the old primary
stopped. Every role reconnects to the new primary and nothing is lost."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from recorder.db import migrate
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
from tests.faults.test_process_faults import config_file
from tests.helpers import free_port

pytestmark = pytest.mark.slow

IDENTITIES = 6


def postgres_bin() -> Path:
    """The embedded server's binaries (pgserver ships initdb, pg_ctl, pg_basebackup)."""
    try:
        import pgserver
    except ImportError:
        pytest.skip("no PostgreSQL binaries: the pgserver package is missing")
    found = Path(pgserver.__file__).parent / "pginstall" / "bin"
    for tool in ("initdb", "pg_ctl", "pg_basebackup", "postgres"):
        if not (found / tool).exists():
            pytest.skip(f"no {tool} among the PostgreSQL binaries in {found}")
    return found


def server_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, the user its tools run as."""
    if os.geteuid() != 0:
        return None
    for user in ("pgserver", "postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return user
    pytest.skip("running as root and no user to run PostgreSQL as")


def as_owner(command: list[str]) -> list[str]:
    user = server_user()
    return command if user is None else ["runuser", "-u", user, "--", *command]


def run(command: list[str]) -> None:
    subprocess.run(as_owner(command), check=True, capture_output=True, timeout=120)


class Cluster:
    """A primary on one port and a synchronous standby on another, in a directory of its own."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="recorder-failover-"))
        self.root.chmod(0o777)
        self.primary, self.standby = self.root / "primary", self.root / "standby"
        self.ports = {self.primary: free_port(), self.standby: free_port()}
        owner = server_user()
        if owner is not None:
            shutil.chown(self.root, user=owner)

    def dsn(self, *nodes: Path, database: str = "recorder", attrs: str | None = None) -> str:
        hosts = ",".join(f"127.0.0.1:{self.ports[node]}" for node in nodes)
        query = f"?target_session_attrs={attrs}" if attrs else ""
        return f"postgresql://postgres@{hosts}/{database}{query}"

    def start(self) -> None:
        run([str(self.bin / "initdb"), "-D", str(self.primary), "-U", "postgres",
             "--auth=trust", "-E", "UTF8"])
        with (self.primary / "postgresql.conf").open("a") as conf:
            conf.write(f"""
port = {self.ports[self.primary]}
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
wal_level = replica
max_wal_senders = 5
synchronous_standby_names = '*'
synchronous_commit = on
""")
        with (self.primary / "pg_hba.conf").open("a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        self.pg_ctl(self.primary, "start")
        run([str(self.bin / "pg_basebackup"), "-D", str(self.standby), "-R", "-X", "stream",
             "-h", "127.0.0.1", "-p", str(self.ports[self.primary]), "-U", "postgres"])
        with (self.standby / "postgresql.conf").open("a") as conf:
            conf.write(f"\nport = {self.ports[self.standby]}\nsynchronous_standby_names = ''\n")
        self.pg_ctl(self.standby, "start")

    def pg_ctl(self, node: Path, *args: str) -> None:
        run([str(self.bin / "pg_ctl"), "-D", str(node), "-w", "-l", str(node) + ".log", *args])

    def stop(self) -> None:
        for node in (self.standby, self.primary):
            if (node / "postmaster.pid").exists():
                subprocess.run(as_owner([str(self.bin / "pg_ctl"), "-D", str(node), "-m",
                                         "immediate", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    made = Cluster()
    try:
        made.start()
        yield made
    finally:
        made.stop()


async def test_the_standby_is_promoted_mid_stream_and_nothing_is_lost(
    cluster: Cluster, tmp_path: Path, record_property: Callable[[str, object], None],
) -> None:
    admin = await asyncpg.connect(cluster.dsn(cluster.primary, database="postgres"))
    await admin.execute("CREATE DATABASE recorder")
    await admin.close()
    both = cluster.dsn(cluster.primary, cluster.standby, attrs="read-write")
    await migrate.upgrade(DatabaseTarget(dsn=cluster.dsn(cluster.primary), embedded=False))
    async with Simulator(account=ACCOUNT, seed=154) as sim:
        consumers = [sim.new_consumer() for _ in range(IDENTITIES)]
        config = config_file(tmp_path / "recorder.toml",
                             token_file_identities(sim, consumers, tmp_path))
        daemon = DaemonProcess(
            {"RECORDER_DATABASE_URL": both, "RECORDER_ACCOUNT": ACCOUNT,
             "RECORDER_UMS_URL": sim.ws_url, "RECORDER_CSDS_URL": sim.http_url,
             "RECORDER_CONFIG": str(config),
             "RECORDER_LOG_LEVEL": "info"},
            tmp_path / "daemon.log",
        )
        traffic = sim.start_traffic(consumers, 3, rate=150, total_events=3000)
        first = await asyncpg.connect(cluster.dsn(cluster.primary))
        try:
            await daemon.start()
            await poll(head_reaches(first, 500), "nothing recorded on the primary", within_s=60)
            await first.close()
            cluster.pg_ctl(cluster.standby, "promote")
            cluster.pg_ctl(cluster.primary, "-m", "immediate", "stop")
            switched = time.monotonic()
            db = await asyncpg.connect(cluster.dsn(cluster.standby))
            head = int(await db.fetchval("SELECT position FROM log_head"))
            await poll(head_reaches(db, head + 50), "nothing recorded on the new primary",
                       within_s=90)
            resumed_s = time.monotonic() - switched
            record_property("failover_to_first_commit_s", round(resumed_s, 1))
            print(f"\nstandby promoted, primary stopped: recording again after {resumed_s:.1f}s")
            await asyncio.wait_for(traffic, 90)
            await oracle.wait_until_recorded(sim, consumers, db, within_s=90)
            assert await daemon.terminate() == 0, daemon.output()[-3000:]
        finally:
            if daemon.running:
                await daemon.terminate()
        assert "Traceback" not in daemon.output(), daemon.output()[-3000:]
        await oracle.assert_oracle(
            sim, consumers, DatabaseTarget(dsn=cluster.dsn(cluster.standby), embedded=False), db)
        await db.close()
