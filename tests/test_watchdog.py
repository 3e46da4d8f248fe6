"""ServiceWatchdog with the real Notifier over a real datagram socket: READY, WATCHDOG, STATUS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from recorder.notify import Notifier
from recorder.watchdog import ServiceWatchdog
from tests.helpers import wait_until


class Listener:
    """The systemd side: every datagram, parsed, in arrival order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        with contextlib.suppress(BlockingIOError):
            while True:
                lines = self.sock.recv(65536).decode().splitlines()
                self.messages.append(dict(line.split("=", 1) for line in lines))
        return self.messages

    def count(self, key: str) -> int:
        return sum(key in message for message in self.drain())


class Writer:
    def __init__(self) -> None:
        self.head = 10
        self.stalled = 0.0

    def stalled_s(self) -> float:
        return self.stalled


class Projector:
    position = 6


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    listening = Listener(tmp_path / "notify.sock")
    yield listening
    listening.sock.close()


def notifier(listener: Listener, *, watchdog: bool = True) -> Notifier:
    environ = {"NOTIFY_SOCKET": str(listener.path)}
    if watchdog:
        environ["WATCHDOG_USEC"] = "20000"  # a ping every 10 ms
    return Notifier(environ)


@contextlib.asynccontextmanager
async def running(dog: ServiceWatchdog) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(dog.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def watchdog(
    listener: Listener, writer: Writer, ready: asyncio.Event, *, with_pings: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> ServiceWatchdog:
    return ServiceWatchdog(notifier(listener, watchdog=with_pings), writer, Projector(),
                           lambda: (1, 2), ready=ready, writer_stuck_after_s=90.0,
                           status_every_s=0.02, clock=clock)


async def test_nothing_is_sent_before_ready_and_a_stop_before_ready_ends_quietly(
    listener: Listener,
) -> None:
    dog = watchdog(listener, Writer(), asyncio.Event())
    async with running(dog):
        for _ in range(50):
            await asyncio.sleep(0)  # let the task run: it must be waiting for ready
        assert listener.drain() == []
    assert listener.drain() == [] and dog.pings == 0 and dog.withheld == 0


async def test_ready_comes_first_with_a_status_then_pings_while_healthy(
    listener: Listener,
) -> None:
    ready = asyncio.Event()
    dog = watchdog(listener, Writer(), ready)
    async with running(dog):
        ready.set()
        await wait_until(lambda: dog.pings >= 3, within_s=10)
    first, *rest = listener.drain()
    assert first["READY"] == "1" and first["MAINPID"] == str(os.getpid())
    assert first["STATUS"] == ("recording: 1/2 identities connected, 0 events/s, head 10, "
                               "projection lag 4 events")
    assert not any("READY" in message for message in rest)
    assert listener.count("WATCHDOG") == dog.pings and dog.withheld == 0


async def test_a_writer_stuck_in_a_commit_withholds_pings_until_it_moves_again(
    listener: Listener, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="recorder")
    ready, writer = asyncio.Event(), Writer()
    # A frozen clock: no periodic STATUS is ever due, so every STATUS is a change of health.
    dog = watchdog(listener, writer, ready, clock=lambda: 0.0)
    async with running(dog):
        ready.set()
        await wait_until(lambda: dog.pings >= 2, within_s=10)
        writer.stalled = 120.0
        await wait_until(lambda: dog.withheld >= 1, within_s=10)
        pings = dog.pings
        await wait_until(lambda: dog.withheld >= 5, within_s=10)
        assert dog.pings == pings, "no WATCHDOG=1 while the writer is stuck"
        messages = list(listener.drain())
        writer.stalled = 0.0
        await wait_until(lambda: dog.pings > pings, within_s=10)
    statuses = [m["STATUS"] for m in messages if "STATUS" in m]
    assert statuses[1:] == ["unhealthy: the writer has been inside one commit for 120s"]
    stuck_at = next(i for i, m in enumerate(messages) if m.get("STATUS") == statuses[1])
    assert not any("WATCHDOG" in m for m in messages[stuck_at:])
    after = [m["STATUS"] for m in listener.drain()[len(messages):] if "STATUS" in m]
    assert len(after) == 1 and after[0].startswith("recording: "), after
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("service.watchdog.withheld") == 1, "logged once, not every tick"
    assert events.count("service.watchdog.resumed") == 1


def test_stuck_means_longer_than_the_threshold(listener: Listener) -> None:
    writer = Writer()
    dog = watchdog(listener, writer, asyncio.Event())
    writer.stalled = 90.0
    assert dog.problem() is None
    writer.stalled = 90.6
    assert dog.problem() == "the writer has been inside one commit for 91s"


async def test_without_a_watchdog_setting_only_status_is_sent(listener: Listener) -> None:
    ready = asyncio.Event()
    dog = watchdog(listener, Writer(), ready, with_pings=False)
    async with running(dog):
        ready.set()
        await wait_until(lambda: listener.count("STATUS") >= 4, within_s=10)
    assert listener.count("WATCHDOG") == 0 and dog.pings == 0
    assert listener.count("READY") == 1


def test_the_status_line_reports_the_rate_since_the_last_one(listener: Listener) -> None:
    now = [100.0]
    writer, projector = Writer(), Projector()
    dog = ServiceWatchdog(notifier(listener), writer, projector, lambda: (3, 3),
                          ready=asyncio.Event(), clock=lambda: now[0])
    assert "0 events/s, head 10," in dog.summary()
    now[0], writer.head = 102.0, 2_010
    assert dog.summary() == ("recording: 3/3 identities connected, 1,000 events/s, "
                             "head 2010, projection lag 2004 events")
    projector.position = 5_000  # a projector ahead of the head it was read with
    assert dog.summary().endswith("projection lag 0 events")
