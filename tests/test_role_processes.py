"""`recorder run` as a supervisor of role processes: real processes, signals and sockets.

Each role runs in a process of its own; a role killed with SIGKILL is restarted with backoff
and nothing is lost; systemd hears READY=1 once every role is ready and WATCHDOG=1 only while
every role pings; SIGTERM drains serve, then ingest, then project.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from recorder.db.target import DatabaseTarget
from recorder.simulator import Simulator
from tests.faults import oracle
from tests.faults.harness import ACCOUNT, DaemonProcess, poll, token_file_identities
from tests.faults.test_process_faults import config_file
from tests.helpers import free_port
from tests.test_service import NotifySocket, notify_socket  # noqa: F401 (fixture)

API_TOKEN = "role-processes-api-token-3c9e"


def roles_file(state: Path) -> dict[str, Any]:
    try:
        record = orjson.loads((state / "roles.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def by_name(state: Path) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in roles_file(state).get("roles", [])}


def parent_of(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


def listening_inodes(port: int) -> set[int]:
    """Inodes of the TCP sockets listening on `port` (state 0A in /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(int(fields[9]))
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def environ_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def all_ready(state: Path, names: set[str]) -> bool:
    roles = by_name(state)
    return names <= roles.keys() and all(roles[n]["ready"] and roles[n]["running"]
                                         for n in names)


async def metrics_text(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"}
    ) as reply:
        assert reply.status == 200
        return await reply.text()


def daemon_for(sim: Simulator, consumers: list[str], database: DatabaseTarget, tmp_path: Path,
               port: int, **extra: str) -> DaemonProcess:
    identities = token_file_identities(sim, consumers, tmp_path)
    return DaemonProcess(
        {
            "RECORDER_DATABASE_URL": database.dsn,
            "RECORDER_ACCOUNT": ACCOUNT,
            "RECORDER_UMS_URL": sim.ws_url,
            "RECORDER_CSDS_URL": sim.http_url,
            "RECORDER_CONFIG": str(config_file(tmp_path / "recorder.toml", identities)),
            "RECORDER_API_TOKEN": API_TOKEN,
            "RECORDER_API_LISTEN": f"127.0.0.1:{port}",
            "RECORDER_STATE_DIR": str(tmp_path / "state"),
            **extra,
        },
        tmp_path / "daemon.log",
    )


async def test_each_role_runs_in_its_own_process_and_a_killed_role_is_restarted(
    database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path,
) -> None:
    state, port = tmp_path / "state", free_port()
    names = {"ingest", "project", "serve.1", "serve.2"}
    async with Simulator(account=ACCOUNT, seed=141) as sim:
        consumers = [sim.new_consumer() for _ in range(2)]
        daemon = daemon_for(sim, consumers, database, tmp_path, port,
                            RECORDER_API_WORKERS="2")
        await daemon.start()
        try:
            assert daemon.process is not None
            await poll(lambda: all_ready(state, names), "the roles never got ready", within_s=60)
            roles = by_name(state)
            pids = {name: roles[name]["pid"] for name in names}
            assert len(set(pids.values())) == 4, pids
            for pid in pids.values():
                assert parent_of(pid) == daemon.process.pid, "roles are the supervisor's children"

            traffic = sim.start_traffic(consumers, 3, rate=300, total_events=2500)
            await asyncio.sleep(1.0)
            os.kill(pids["ingest"], signal.SIGKILL)  # mid-traffic: no flush, no goodbye
            await poll(lambda: by_name(state)["ingest"]["restarts"] == 1
                       and by_name(state)["ingest"]["ready"], "ingest was not restarted",
                       within_s=60)
            assert by_name(state)["ingest"]["pid"] != pids["ingest"]
            os.kill(pids["project"], signal.SIGKILL)
            await poll(lambda: by_name(state)["project"]["restarts"] == 1
                       and by_name(state)["project"]["ready"], "project was not restarted",
                       within_s=60)

            status = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "recorder", "status", env=daemon._env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(status.communicate(), 60)
            assert status.returncode == 0, err.decode()
            text = out.decode()
            assert "roles (supervisor pid" in text, text
            assert any(line.strip().startswith("ingest: ready") and "1 restarts" in line
                       for line in text.splitlines()), text

            await asyncio.wait_for(traffic, 90)
            await oracle.wait_until_recorded(sim, consumers, db)

            async def projected() -> bool:
                head = await db.fetchval("SELECT position FROM log_head")
                return bool(await db.fetchval(
                    "SELECT position FROM projection_positions") == head)

            await poll(projected, "the restarted projector did not catch up", within_s=60)
            text = await metrics_text(port)
            assert 'recorder_role_restarts_total{role="ingest"} 1.0' in text, text
            assert 'recorder_role_restarts_total{role="project"} 1.0' in text
            assert 'recorder_role_up{role="serve"} 1.0' in text
            stored = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("recorder_events_stored_total"))
            assert stored > 0, "the ingest role's counters reach the serve role's /metrics"
            assert await daemon.terminate() == 0, daemon.output()[-3000:]
        finally:
            if daemon.running:
                await daemon.terminate()
        await oracle.assert_oracle(sim, consumers, database, db)
    output = daemon.output()
    assert "role ingest" in output and "was killed by SIGKILL" in output, output[-3000:]
    stops = [line for line in output.splitlines() if "roles.process.stopped" in line]
    order = [next(n for n in ("serve", "ingest", "project") if f"role {n}" in line)
             for line in stops]
    assert order == sorted(order, key=("serve", "ingest", "project").index), stops
    assert API_TOKEN not in output


async def test_systemd_hears_ready_once_every_role_is_and_pings_only_while_all_are_healthy(
    database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path,
    notify_socket: NotifySocket,  # noqa: F811
) -> None:
    state, port = tmp_path / "state", free_port()
    async with Simulator(account=ACCOUNT, seed=142) as sim:
        consumers = [sim.new_consumer()]
        daemon = daemon_for(sim, consumers, database, tmp_path, port,
                            NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="1000000")
        await daemon.start()
        try:
            await poll(lambda: bool(notify_socket.having("READY", "1")), "no READY=1",
                       within_s=60)
            assert all_ready(state, {"ingest", "project", "serve"}), roles_file(state)
            [(_, ready)] = notify_socket.having("READY", "1")
            assert ready["MAINPID"] == str(daemon.process.pid if daemon.process else 0)
            assert "ingest" in ready["STATUS"] and "serve" in ready["STATUS"]
            await poll(lambda: len(notify_socket.having("WATCHDOG")) >= 3, "no pings")

            frozen = by_name(state)["project"]["pid"]
            os.kill(frozen, signal.SIGSTOP)  # a hung role: alive, silent
            try:
                await poll(lambda: any("unhealthy" in f.get("STATUS", "")
                                       for _, f in notify_socket.having("STATUS")),
                           "a silent role was not reported", within_s=30)
                notify_socket.messages.clear()
                await asyncio.sleep(2.0)
                assert not notify_socket.having("WATCHDOG"), "pinged while a role was hung"
            finally:
                os.kill(frozen, signal.SIGCONT)
            notify_socket.messages.clear()
            await poll(lambda: len(notify_socket.having("WATCHDOG")) >= 2,
                       "pings did not resume", within_s=30)
            assert await daemon.terminate() == 0, daemon.output()[-3000:]
            assert notify_socket.having("STOPPING", "1")
        finally:
            if daemon.running:
                await daemon.terminate()


async def test_an_api_port_another_program_holds_exits_2_before_any_role_starts(
    database: DatabaseTarget, tmp_path: Path,
) -> None:
    async with Simulator(account=ACCOUNT, seed=143) as sim:
        consumers = [sim.new_consumer()]
        port = free_port()
        daemon = daemon_for(sim, consumers, database, tmp_path, port,
                            RECORDER_API_WORKERS="2")
        # Another program holds the port without SO_REUSEPORT: the supervisor's probe says so.
        import socket

        with socket.socket() as holder:
            holder.bind(("127.0.0.1", port))
            holder.listen()
            await daemon.start()
            assert daemon.process is not None
            code = await asyncio.wait_for(daemon.process.wait(), 60)
        assert code == 2, daemon.output()[-2000:]
        assert "RECORDER_API_LISTEN" in daemon.output()


async def test_the_serve_role_alone_runs_its_workers_on_one_port(
    database: DatabaseTarget, tmp_path: Path,
) -> None:
    """`recorder run --role serve` with two workers: a supervisor over two serve processes
    that share the port (SO_REUSEPORT), and nothing else (no sockets, no writer)."""
    state, port = tmp_path / "state", free_port()
    daemon = DaemonProcess(
        {
            "RECORDER_DATABASE_URL": database.dsn,
            "RECORDER_API_TOKEN": API_TOKEN,
            "RECORDER_API_LISTEN": f"127.0.0.1:{port}",
            "RECORDER_STATE_DIR": str(state),
            "RECORDER_RUN_ROLE": "serve",
            "RECORDER_API_WORKERS": "2",
        },
        tmp_path / "daemon.log",
    )
    await daemon.start()
    try:
        await poll(lambda: all_ready(state, {"serve.1", "serve.2"}), "workers not ready",
                   within_s=60)
        roles = by_name(state)
        assert set(roles) == {"serve.1", "serve.2"}
        listening = listening_inodes(port)
        for name in ("serve.1", "serve.2"):  # each worker holds a listener of its own
            assert socket_inodes(roles[name]["pid"]) & listening, name
        async with aiohttp.ClientSession() as http:
            for _ in range(10):
                async with http.get(f"http://127.0.0.1:{port}/livez",
                                    headers={"Connection": "close"}) as reply:
                    assert reply.status == 200
        text = await metrics_text(port)
        assert 'recorder_role_up{role="serve"} 1.0' in text
        assert await daemon.terminate() == 0, daemon.output()[-3000:]
    finally:
        if daemon.running:
            await daemon.terminate()
    assert "[serve.1]" in daemon.output() and "[serve.2]" in daemon.output()


async def test_a_database_password_never_reaches_a_roles_environment(
    database: DatabaseTarget, tmp_path: Path,
) -> None:
    """With RECORDER_DATABASE_URL_FILE (a systemd credential), each role reads the file
    itself: the password is in no process's environment (readable in /proc)."""
    password = "role-env-password-7d1e"  # trust auth ignores it; it only must not leak
    url = database.dsn.replace("postgresql://postgres:", f"postgresql://postgres:{password}", 1)
    if password not in url:  # a URL without the user:password form
        url = database.dsn.replace("postgresql://", f"postgresql://postgres:{password}@", 1)
    assert password in url
    url_file = tmp_path / "database-url"
    url_file.write_text(url)
    state, port = tmp_path / "state", free_port()
    async with Simulator(account=ACCOUNT, seed=144) as sim:
        consumers = [sim.new_consumer()]
        daemon = daemon_for(sim, consumers, database, tmp_path, port)
        daemon._env.pop("RECORDER_DATABASE_URL")
        daemon._env["RECORDER_DATABASE_URL_FILE"] = str(url_file)
        await daemon.start()
        try:
            await poll(lambda: all_ready(state, {"ingest", "project", "serve"}),
                       "the roles never got ready", within_s=60)
            assert daemon.process is not None
            for pid in [daemon.process.pid, *(r["pid"] for r in by_name(state).values())]:
                assert password.encode() not in environ_of(pid), pid
            assert await daemon.terminate() == 0, daemon.output()[-3000:]
        finally:
            if daemon.running:
                await daemon.terminate()
    assert password not in daemon.output()
