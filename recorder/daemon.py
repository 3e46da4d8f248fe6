"""`recorder run`: the daemon until SIGTERM or SIGINT, then an orderly stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

from recorder.app import build_app
from recorder.config import Settings
from recorder.database import open_database

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)

    def request_stop(number: int) -> None:
        if not stop.is_set():
            log.info("%s received: stopping (close sockets, flush, commit)",
                     signal.Signals(number).name)
        stop.set()

    for number in signals:
        loop.add_signal_handler(number, request_stop, number)
    try:
        yield
    finally:
        for number in signals:
            loop.remove_signal_handler(number)


async def run_daemon(settings: Settings) -> int:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        async with open_database(settings) as target, build_app(settings, target) as app:
            log.info("recording %d identities into %s", len(app.clients), target.describe())
            code = await app.run(stop)
    log.info("stopped; head %d, projection at %d", app.writer.head, app.projector.position)
    return code
