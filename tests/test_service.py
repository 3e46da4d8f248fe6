"""The daemon as a systemd service: sd_notify over a real datagram socket, the watchdog, and a
graceful stop (SIGTERM) then a restart that loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from recorder.app import build_app
from recorder.db.target import DatabaseTarget
from recorder.notify import Notifier
from recorder.simulator import Simulator
from tests.faults import oracle
from tests.faults.harness import (
    ACCOUNT,
    FAST,
    DaemonProcess,
    head_reaches,
    poll,
    settings_for,
    static_identities,
    token_file_identities,
)
from tests.faults.test_process_faults import config_file


class NotifySocket:
    """What systemd listens on: a datagram socket; every message is kept with its time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def drain(self) -> list[tuple[float, dict[str, str]]]:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            fields = dict(
                line.split("=", 1) for line in data.decode().splitlines() if "=" in line
            )
            self.messages.append((time.monotonic(), fields))

    def having(self, key: str, value: str | None = None) -> list[tuple[float, dict[str, str]]]:
        return [
            (at, fields) for at, fields in self.drain()
            if key in fields and (value is None or fields[key] == value)
        ]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify.sock")
    try:
        yield listener
    finally:
        listener.close()


# -- the notifier alone -------------------------------------------------------------------------


def test_the_notifier_speaks_the_sd_notify_protocol(notify_socket: NotifySocket) -> None:
    environ = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "3000000",
               "WATCHDOG_PID": str(os.getpid()), "OTHER": "kept"}
    notifier = Notifier(environ)
    assert environ == {"OTHER": "kept"}, "children must not inherit the notify socket"
    assert notifier.watchdog_interval_s == 1.5
    assert notifier.ready("up:\n 2 identities")
    assert notifier.watchdog() and notifier.status("fine") and notifier.stopping()
    messages = [fields for _, fields in notify_socket.drain()]
    assert messages[0]["READY"] == "1" and messages[0]["STATUS"] == "up: 2 identities"
    assert messages[0]["MAINPID"] == str(os.getpid())
    assert messages[1:] == [{"WATCHDOG": "1"}, {"STATUS": "fine"},
                            {"STOPPING": "1", "STATUS": messages[3]["STATUS"]}]
    notifier.close()


def test_the_notifier_is_silent_outside_systemd_and_for_another_pid(
    notify_socket: NotifySocket,
) -> None:
    outside = Notifier({})
    assert not outside.enabled and not outside.ready("x") and outside.watchdog_interval_s is None
    other = Notifier({"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000",
                      "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_s is None, "the watchdog was meant for another process"
    gone = Notifier({"NOTIFY_SOCKET": str(notify_socket.path.with_name("missing.sock"))})
    assert not gone.watchdog()  # a vanished socket is reported, not raised


def test_an_abstract_notify_socket_name_is_understood() -> None:
    name = f"recorder-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready("up")
        assert b"READY=1" in listener.recv(4096)
    finally:
        listener.close()


# -- the watchdog in process: a stuck writer stops the pings ------------------------------------


@contextlib.asynccontextmanager
async def locked_events(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """Another session holding the event table: the writer's next commit waits on it."""
    connection = await asyncpg.connect(dsn)
    transaction = connection.transaction()
    await transaction.start()
    await connection.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
    try:
        yield connection
    finally:
        await transaction.rollback()
        await connection.close()


async def test_watchdog_pings_stop_while_the_writer_is_stuck_and_resume_after(
    database: DatabaseTarget, notify_socket: NotifySocket,
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000"})
    async with Simulator(account=ACCOUNT, seed=71) as sim:
        consumers = [sim.new_consumer() for _ in range(2)]
        settings = settings_for(sim, static_identities(sim, consumers))
        stop = asyncio.Event()
        async with build_app(settings, database, client_settings=FAST, notifier=notifier,
                             writer_stuck_after_s=1.0) as app:
            task = asyncio.create_task(app.run(stop))
            try:
                await poll(lambda: bool(notify_socket.having("READY", "1")), "never READY")
                await poll(lambda: len(notify_socket.having("WATCHDOG")) >= 3,
                           "no periodic WATCHDOG=1 while healthy")
                async with locked_events(database.dsn):
                    traffic = sim.start_traffic(consumers, 2, rate=200, total_events=400)
                    await poll(lambda: app.watchdog.withheld > 0,
                               "the watchdog never noticed the stuck writer")
                    assert app.writer.stalled_s() > 1.0
                    notify_socket.drain()
                    since = time.monotonic()
                    await asyncio.sleep(1.0)  # five ping intervals
                    late = [at for at, _ in notify_socket.having("WATCHDOG") if at > since]
                    assert not late, "WATCHDOG=1 sent while the writer was stuck"
                    statuses = [f["STATUS"] for _, f in notify_socket.having("STATUS")]
                    assert any("unhealthy" in s for s in statuses), statuses
                resumed_after = time.monotonic()
                await poll(lambda: any(at > resumed_after
                                       for at, _ in notify_socket.having("WATCHDOG")),
                           "pings did not resume once the writer was free")
                await asyncio.wait_for(traffic, 60)
                db = await asyncpg.connect(database.dsn)
                try:
                    await oracle.wait_until_recorded(sim, consumers, db)
                finally:
                    await db.close()
            finally:
                stop.set()
                assert await asyncio.wait_for(task, 60) == 0


# -- the real process under a pretend systemd ---------------------------------------------------


async def test_recorder_run_as_a_notify_service_stops_gracefully_and_loses_nothing(
    database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path,
    notify_socket: NotifySocket,
) -> None:
    async with Simulator(account=ACCOUNT, seed=72) as sim:
        consumers = [sim.new_consumer() for _ in range(3)]
        identities = token_file_identities(sim, consumers, tmp_path)
        tokens = [sim.token_for(sub) for sub in consumers]
        api_token = "api-token-that-must-never-be-logged-5f1c"
        daemon = DaemonProcess(
            {
                "RECORDER_DATABASE_URL": database.dsn,
                "RECORDER_ACCOUNT": ACCOUNT,
                "RECORDER_UMS_URL": sim.ws_url,
                "RECORDER_CSDS_URL": sim.http_url,
                "RECORDER_CONFIG": str(config_file(tmp_path / "recorder.toml", identities)),
                "RECORDER_API_TOKEN": api_token,
                "RECORDER_LOG_LEVEL": "debug",
                "NOTIFY_SOCKET": str(notify_socket.path),
                "WATCHDOG_USEC": "1000000",
            },
            tmp_path / "daemon.log",
        )
        traffic = sim.start_traffic(consumers, 3, rate=300, total_events=3000)
        await daemon.start()
        try:
            await poll(lambda: bool(notify_socket.having("READY", "1")),
                       "READY=1 never came", within_s=60)
            ready_at = notify_socket.having("READY", "1")[0][0]
            await poll(lambda: len([at for at, _ in notify_socket.having("WATCHDOG")
                                    if at > ready_at]) >= 3,
                       "no periodic WATCHDOG=1 after READY=1")
            statuses = [f["STATUS"] for _, f in notify_socket.having("STATUS")]
            assert any("identities connected" in s for s in statuses), statuses
            await poll(head_reaches(db, 300), "nothing recorded")

            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGHUP)  # no reload: logged, and it keeps going
            await poll(lambda: "does not reload" in daemon.output(), "SIGHUP not handled")
            assert daemon.running
            daemon.process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(daemon.process.wait(), 60)
            output = daemon.output()
            assert code == 0, output[-3000:]
            assert notify_socket.having("STOPPING", "1"), "no STOPPING=1 on SIGTERM"
            assert "Traceback" not in output, output[-3000:]

            # The rest of the traffic arrives while it is down; a restart records it all.
            await daemon.start()
            await asyncio.wait_for(traffic, 90)
            await oracle.wait_until_recorded(sim, consumers, db)
            assert await daemon.terminate() == 0
        finally:
            if daemon.running:
                await daemon.terminate()
        await oracle.assert_oracle(sim, consumers, database, db)
        output = daemon.output()
        for secret in (*tokens, api_token):
            assert secret not in output, "a secret reached the log"


async def test_a_second_signal_stops_at_once_and_still_loses_nothing(
    database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path,
) -> None:
    async with Simulator(account=ACCOUNT, seed=73) as sim:
        consumers = [sim.new_consumer() for _ in range(3)]
        identities = token_file_identities(sim, consumers, tmp_path)
        daemon = DaemonProcess(
            {
                "RECORDER_DATABASE_URL": database.dsn,
                "RECORDER_ACCOUNT": ACCOUNT,
                "RECORDER_UMS_URL": sim.ws_url,
                "RECORDER_CSDS_URL": sim.http_url,
                "RECORDER_CONFIG": str(config_file(tmp_path / "recorder.toml", identities)),
            },
            tmp_path / "daemon.log",
        )
        traffic = sim.start_traffic(consumers, 3, rate=400, total_events=3000)
        await daemon.start()
        try:
            await poll(head_reaches(db, 500), "nothing recorded", within_s=60)
            assert daemon.process is not None
            # The writer cannot commit, so a graceful stop would wait out its drain (30 s).
            async with locked_events(database.dsn):
                await asyncio.sleep(0.5)
                daemon.process.send_signal(signal.SIGINT)
                await poll(lambda: "received: stopping" in daemon.output(),
                           "the first signal was not handled")
                daemon.process.send_signal(signal.SIGINT)
                code = await asyncio.wait_for(daemon.process.wait(), 15)
            output = daemon.output()
            assert code == 1, output[-3000:]  # hurried: what still ran was cancelled
            assert "received again: stopping now" in output, output[-3000:]
            await daemon.start()
            await asyncio.wait_for(traffic, 90)
            await oracle.wait_until_recorded(sim, consumers, db)
            assert await daemon.terminate() == 0
        finally:
            if daemon.running:
                await daemon.terminate()
        await oracle.assert_oracle(sim, consumers, database, db)
