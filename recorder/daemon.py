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
import os
import shutil
import signal
from collections.abc import Callable, Iterator, Sequence

from recorder.api import check_listen_allowed, probe_listen
from recorder.app import ROLES, build_app
from recorder.config import Settings
from recorder.db import migrate
from recorder.db.target import open_database
from recorder.identities import require_recording_settings
from recorder.logs import ROLE_PROCESS_ENV, event
from recorder.metrics import RoleMetrics, use_multiprocess_dir
from recorder.notify import Notifier
from recorder.role_processes import RoleSupervisor, plan

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


def runs_in_process(settings: Settings, role: str | None) -> bool:
    """One role in this process (a supervised child, `--role ingest|project`, one serve
    worker), or a supervisor over role processes (`recorder run`, several serve workers)."""
    if os.environ.get(ROLE_PROCESS_ENV):
        return True
    return role in ("ingest", "project") or (role == "serve" and settings.api_workers == 1)


async def run_daemon(
    settings: Settings, role: str | None = None, command: Sequence[str] = ("run",)
) -> int:
    """`command`: this process's own arguments (`recorder` … `run` …), which role processes
    are started with, so that they read the same configuration."""
    if runs_in_process(settings, role):
        return await run_in_process(settings, ROLES if role is None else (role,))
    return await run_role_processes(settings, ROLES if role is None else (role,), command)


async def run_in_process(settings: Settings, roles: Sequence[str]) -> int:
    # First: it takes NOTIFY_SOCKET out of the environment before any child process starts.
    notifier = Notifier()
    stop = asyncio.Event()
    hurry: list[Callable[[], None]] = []
    try:
        with stop_on_signals(stop, on_stop=notifier.stopping,
                             on_hurry=lambda: [h() for h in hurry]):
            async with open_database(settings) as target, \
                    build_app(settings, target, roles=roles, notifier=notifier) as app:
                hurry.append(app.supervisor.hurry)
                log.info("%s: %d identities, database %s", "+".join(app.roles), len(app.clients),
                         target.describe(), extra=event("service.started"))
                tune_garbage_collector()
                code = await app.run(stop)
                notifier.stopping()
        stopped = [f"head {app.writer.head}" if app.writer else "",
                   f"projection at {app.projector.position}" if app.projector else ""]
        log.info("stopped; %s", ", ".join(p for p in stopped if p) or "API closed",
                 extra=event("service.stopped"))
        return code
    finally:
        notifier.close()


async def run_role_processes(
    settings: Settings, roles: Sequence[str], command: Sequence[str] = ("run",)
) -> int:
    """The supervisor: check what a child could only fail on, then run the role processes."""
    notifier = Notifier()
    stop = asyncio.Event()
    if "ingest" in roles:
        require_recording_settings(settings)
    if "serve" in roles:
        host, port = settings.api_host_port
        check_listen_allowed(host, next(iter(settings.api_credentials().values()), None))
        probe_listen(host, port, reuse_port=settings.api_workers > 1)
    supervisor: RoleSupervisor | None = None

    def hurry() -> None:
        if supervisor is not None:
            supervisor.hurry()

    try:
        with stop_on_signals(stop, on_stop=notifier.stopping, on_hurry=hurry):
            async with open_database(settings) as target:
                await migrate.require_current_schema(target)
                metrics_dir = settings.state_dir / "metrics"
                shutil.rmtree(metrics_dir, ignore_errors=True)  # counters start at 0 per run
                metrics_dir.mkdir(parents=True)
                use_multiprocess_dir(str(metrics_dir))
                processes = plan(roles, settings.api_workers)
                supervisor = RoleSupervisor(
                    processes, command=command,
                    environ=child_environment(target.dsn if target.embedded else None,
                                              settings.instance_name),
                    notifier=notifier, state_dir=settings.state_dir, metrics=RoleMetrics(),
                )
                log.info("starting roles %s as processes; database %s",
                         ", ".join(p.name for p in processes), target.describe(),
                         extra=event("service.started"))
                code = await supervisor.run(stop)
        log.info("stopped: %s", supervisor.summary(), extra=event("service.stopped"))
        return code
    finally:
        notifier.close()


def child_environment(embedded_dsn: str | None, instance: str) -> dict[str, str]:
    """What every role process inherits: this environment, the instance name (the roles of
    one instance share it: by default this supervisor's host and pid), plus the embedded
    database the supervisor started. Settings from flags travel in the command line
    (`command`), never secrets in the environment: a configured URL or its `_FILE` is read
    again by each role."""
    environ = dict(os.environ)
    environ["RECORDER_INSTANCE"] = instance
    if embedded_dsn is not None:  # a local socket, no password
        environ["RECORDER_DATABASE_URL"] = embedded_dsn
        environ.pop("RECORDER_DATABASE_URL_FILE", None)
    return environ
