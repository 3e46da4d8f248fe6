"""`recorder run`: the daemon until SIGTERM or SIGINT, then an orderly stop.

The first signal stops it gracefully: sockets close with 1000, the writer drains its queue and
commits, cursors advance, a running export finishes (or is cancelled and redone later), exit 0.
A second signal hurries it: whatever still runs is cancelled. That still loses nothing: cursors
only advance after a commit, so anything uncommitted is fetched again (`fromSeq`) next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable, Iterator

from recorder.app import build_app
from recorder.config import Settings
from recorder.db.target import open_database
from recorder.logs import event
from recorder.notify import Notifier

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stop_on_signals(
    stop: asyncio.Event,
    *,
    on_stop: Callable[[], object] | None = None,
    on_hurry: Callable[[], object] | None = None,
) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)

    def request_stop(number: int) -> None:
        name = signal.Signals(number).name
        if not stop.is_set():
            log.info("%s received: stopping (close sockets, flush, commit)", name,
                     extra=event("service.stopping"))
            stop.set()
            if on_stop is not None:
                on_stop()
        elif on_hurry is not None:
            log.warning("%s received again: stopping now; anything uncommitted is fetched "
                        "again on the next start", name, extra=event("service.hurried"))
            on_hurry()

    def refuse_reload() -> None:
        # SIGHUP would otherwise end the process; settings are read at start only.
        log.warning("SIGHUP received: recorder does not reload its settings; restart it "
                    "(systemctl restart recorder) to apply changes", extra=event("service.reload"))

    for number in signals:
        loop.add_signal_handler(number, request_stop, number)
    loop.add_signal_handler(signal.SIGHUP, refuse_reload)
    try:
        yield
    finally:
        for number in (*signals, signal.SIGHUP):
            loop.remove_signal_handler(number)


def tune_garbage_collector() -> None:
    """Long-lived start-up objects out of the collector's way, and fewer young collections.

    With the defaults, full collections over the daemon's live objects paused the event loop
    for 100-800 ms and cost ~19% of its CPU under load (bench/ingest.py profile).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def run_daemon(settings: Settings) -> int:
    # First: it takes NOTIFY_SOCKET out of the environment before any child process starts.
    notifier = Notifier()
    stop = asyncio.Event()
    hurry: list[Callable[[], None]] = []
    try:
        with stop_on_signals(stop, on_stop=notifier.stopping,
                             on_hurry=lambda: [h() for h in hurry]):
            async with open_database(settings) as target, \
                    build_app(settings, target, notifier=notifier) as app:
                hurry.append(app.supervisor.hurry)
                log.info("recording %d identities into %s", len(app.clients),
                         target.describe(), extra=event("service.started"))
                tune_garbage_collector()
                code = await app.run(stop)
                notifier.stopping()
        log.info("stopped; head %d, projection at %d", app.writer.head, app.projector.position,
                 extra=event("service.stopped"))
        return code
    finally:
        notifier.close()
