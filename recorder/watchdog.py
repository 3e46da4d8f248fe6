"""The service watchdog: READY=1 once the daemon is up, then WATCHDOG=1 only while healthy,
and a one-line STATUS= for `systemctl status`.

Healthy means: the event loop runs this task on time (a stuck loop sends nothing, so systemd
restarts it), and the writer is not stuck inside one commit for longer than
`writer_stuck_after_s`. An upstream outage is healthy: the clients retry on their schedule and
the writer, with nothing to commit, is idle. A database outage is healthy too while the writer
retries on its schedule (each attempt ends, by error or timeout); a commit that hangs is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from recorder.logs import event
from recorder.notify import Notifier

log = logging.getLogger(__name__)


class _Writer(Protocol):
    head: int

    def stalled_s(self) -> float: ...


class _Projector(Protocol):
    position: int

    @property
    def lag_events(self) -> int: ...


class ServiceWatchdog:
    def __init__(
        self,
        notifier: Notifier,
        writer: _Writer | None,
        projector: _Projector | None,
        identities: Callable[[], tuple[int, int]] | None,
        *,
        ready: asyncio.Event,
        writer_stuck_after_s: float = 90.0,
        status_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self._writer = writer
        self._projector = projector
        self._identities = identities  # () -> (connected, configured); None: no sockets here
        self._ready = ready
        self.writer_stuck_after_s = writer_stuck_after_s
        self._status_every = status_every_s
        self._clock = clock
        self._last_head: tuple[float, int] | None = None
        self.pings = 0
        self.withheld = 0

    def problem(self) -> str | None:
        """Why the service is unhealthy, or None."""
        stalled = 0.0 if self._writer is None else self._writer.stalled_s()
        if stalled > self.writer_stuck_after_s:
            return f"the writer has been inside one commit for {stalled:.0f}s"
        return None

    def summary(self) -> str:
        """One line for `systemctl status`, naming what this process runs."""
        parts: list[str] = []
        if self._identities is not None:
            connected, configured = self._identities()
            parts.append(f"{connected}/{configured} identities connected")
        if self._writer is not None:
            now = self._clock()
            head = self._writer.head
            rate = 0.0
            if self._last_head is not None and now > self._last_head[0]:
                rate = (head - self._last_head[1]) / (now - self._last_head[0])
            self._last_head = (now, head)
            parts.append(f"{rate:,.0f} events/s, head {head}")
        if self._projector is not None:
            lag = (max(0, self._writer.head - self._projector.position)
                   if self._writer is not None else self._projector.lag_events)
            parts.append(f"projection lag {lag} events")
        return "recording: " + ", ".join(parts) if parts else "serving the read API"

    async def run(self, stop: asyncio.Event) -> None:
        waiter = asyncio.create_task(self._ready.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
        if stop.is_set():
            return
        self._notifier.ready(self.summary())
        log.info("ready: the database, the schema and the API are up",
                 extra=event("service.ready"))
        interval = self._notifier.watchdog_interval_s
        tick = min(interval, self._status_every) if interval else self._status_every
        next_status = self._clock() + self._status_every
        unhealthy = False
        while not stop.is_set():
            problem = self.problem()
            changed = (problem is not None) != unhealthy
            if problem is None:
                if interval is not None:
                    self._notifier.watchdog()
                    self.pings += 1
                if unhealthy:
                    log.warning("healthy again; watchdog pings resumed",
                                extra=event("service.watchdog.resumed"))
                unhealthy = False
            else:
                self.withheld += 1
                if not unhealthy:
                    log.error("unhealthy: %s; withholding watchdog pings so systemd restarts "
                              "the service", problem, extra=event("service.watchdog.withheld"))
                unhealthy = True
            if changed or self._clock() >= next_status:
                self._notifier.status(self.summary() if problem is None
                                      else f"unhealthy: {problem}")
                next_status = self._clock() + self._status_every
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)
