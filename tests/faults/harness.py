"""Running the whole daemon against the simulator: in-process (`build_app`) or as a real process.

In-process runs use the FAST client timers of tests/ums/harness.py so that reconnects and
retries play out in a test's time; the real process (needed for `kill -9`) runs with the
production defaults, exactly as `recorder run` would under systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import IO

import asyncpg

from recorder.app import App, build_app
from recorder.config import ConsumerIdentity, Secret, Settings, load_settings
from recorder.db.target import DatabaseTarget
from recorder.simulator import Faults, Simulator
from recorder.simulator.tokens import Identity, TokenError
from recorder.ums.client import ClientSettings
from tests.helpers import free_port
from tests.ums.harness import ACCOUNT, FAST

__all__ = [
    "ACCOUNT", "FAST", "Daemon", "DaemonProcess", "head_reaches", "log_head",
    "next_connection_id", "play", "poll", "revocable_tokens", "running_daemon", "settings_for",
    "static_identities", "token_file_identities", "write_token",
]

#: How long an orderly stop may take (sockets close, the writer drains, the projector catches up).
STOP_WITHIN_S = 60.0


# -- configuration --------------------------------------------------------------------------------


def static_identities(sim: Simulator, consumers: Iterable[str]) -> list[ConsumerIdentity]:
    """One identity per consumer, each with the simulator's token in the configuration."""
    return [
        ConsumerIdentity(name=f"c{n}", jwt=Secret(sim.token_for(sub)))
        for n, sub in enumerate(consumers)
    ]


def write_token(path: Path, token: str) -> None:
    """Replace a token file in one step, as a credential sidecar would (write, then rename)."""
    fresh = path.with_suffix(".new")
    fresh.write_text(token + "\n", encoding="utf-8")
    fresh.replace(path)


def token_file_identities(
    sim: Simulator, consumers: Iterable[str], directory: Path
) -> list[ConsumerIdentity]:
    """One identity per consumer, each reading its token from a file of its own."""
    identities = []
    for n, sub in enumerate(consumers):
        path = directory / f"c{n}.jwt"
        write_token(path, sim.token_for(sub))
        identities.append(ConsumerIdentity(name=f"c{n}", jwt_file=path))
    return identities


def settings_for(
    sim: Simulator, identities: Iterable[ConsumerIdentity], **changes: object
) -> Settings:
    """Daemon settings for the simulator: its account and websocket, and these identities."""
    return dataclasses.replace(
        load_settings(environ={}),
        account=ACCOUNT,
        ums_url=sim.ws_url,
        csds_url=sim.http_url,  # agent profiles and the history, as LivePerson's CSDS names them
        consumers=tuple(identities),
        api_listen=f"127.0.0.1:{free_port()}",
        **changes,  # type: ignore[arg-type]
    )


# -- the daemon in-process ------------------------------------------------------------------------


@dataclasses.dataclass
class Daemon:
    """A daemon running in this event loop, as `recorder run` would run it."""

    app: App
    task: asyncio.Task[int]
    stop_event: asyncio.Event

    @property
    def running(self) -> bool:
        return not self.task.done()

    async def stop(self) -> int:
        """An orderly stop, as on SIGTERM; returns the exit code."""
        self.stop_event.set()
        return await asyncio.wait_for(asyncio.shield(self.task), STOP_WITHIN_S)

    def connections(self) -> int:
        """Websocket sessions opened so far, over every identity."""
        return sum(client.connections for client in self.app.clients)


@contextlib.asynccontextmanager
async def running_daemon(
    settings: Settings,
    target: DatabaseTarget,
    *,
    client_settings: ClientSettings = FAST,
) -> AsyncIterator[Daemon]:
    stop = asyncio.Event()
    async with build_app(settings, target, client_settings=client_settings) as app:
        task = asyncio.create_task(app.run(stop), name="daemon")
        daemon = Daemon(app, task, stop)
        try:
            yield daemon
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, STOP_WITHIN_S)


# -- the daemon as a real process -----------------------------------------------------------------


class DaemonProcess:
    """`python -m recorder run` with only the given RECORDER_* variables; output to a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("RECORDER_") and key not in ("STATE_DIRECTORY", "JOURNAL_STREAM")
        }
        self._env.setdefault("RECORDER_API_LISTEN", f"127.0.0.1:{free_port()}")
        self._env.setdefault("RECORDER_STATE_DIR", str(log_path.parent / "state"))
        self._env.update(env)
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    async def start(self) -> float:
        """Start the daemon; returns the wall-clock time just before the spawn."""
        assert self.process is None or self.process.returncode is not None, "already running"
        self._log = self.log_path.open("ab")
        started = time.time()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "recorder", "run",
            env=self._env, stdout=self._log, stderr=asyncio.subprocess.STDOUT,
        )
        return started

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def kill(self) -> None:
        """SIGKILL: no signal handler, no flush, no goodbye to the sockets or the database."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        self._close_log()

    async def terminate(self, within_s: float = STOP_WITHIN_S) -> int:
        """SIGTERM, as systemd stops the service; returns the exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), within_s)
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
            self._close_log()
        return code

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


# -- traffic and waiting --------------------------------------------------------------------------


async def play(
    sim: Simulator,
    consumers: list[str],
    faults: Faults,
    *,
    conversations: int,
    rate: float,
    total_events: int,
    within_s: float = 60.0,
) -> int:
    """Seeded traffic with `faults` on while it runs; the faults are switched off afterwards."""
    sim.faults = faults
    try:
        traffic = sim.start_traffic(consumers, conversations, rate, total_events=total_events)
        return await asyncio.wait_for(traffic, within_s)
    finally:
        sim.faults = Faults()


async def poll(
    condition: Callable[[], Awaitable[bool] | bool],
    what: str,
    *,
    within_s: float = 30.0,
    every_s: float = 0.05,
) -> float:
    """Wait until a condition (plain or async) holds; returns how long it took.

    Fails with `what` after `within_s`: scenarios wait with a deadline, never a fixed sleep.
    """
    started = time.monotonic()
    while not await _holds(condition):
        elapsed = time.monotonic() - started
        assert elapsed < within_s, f"{what}: not reached within {within_s:.0f}s"
        await asyncio.sleep(every_s)
    return time.monotonic() - started


async def _holds(condition: Callable[[], Awaitable[bool] | bool]) -> bool:
    value = condition()
    return bool(await value) if inspect.isawaitable(value) else bool(value)


async def log_head(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT position FROM log_head WHERE id = 1"))


def head_reaches(db: asyncpg.Connection, position: int) -> Callable[[], Awaitable[bool]]:
    """A `poll` condition: the log holds at least `position` events."""

    async def reached() -> bool:
        return await log_head(db) >= position

    return reached


# -- the simulator --------------------------------------------------------------------------------


def revocable_tokens(sim: Simulator) -> set[str]:
    """Tokens put in the returned set are refused by the simulator from then on, as a revoked
    token would be by LivePerson (HTTP 401 on the websocket upgrade)."""
    revoked: set[str] = set()
    verify = sim.tokens.verify

    def verify_unless_revoked(token: str) -> Identity:
        if token in revoked:
            raise TokenError("token is revoked")
        return verify(token)

    sim.tokens.verify = verify_unless_revoked  # type: ignore[method-assign]
    return revoked


def next_connection_id(sim: Simulator) -> int:
    """A connection id above every connection that has sent anything so far: sockets opened
    from now on (a reconnect, a restarted daemon) have this id or a higher one."""
    return max((frame.connection_id for frame in sim.received), default=0) + 1
