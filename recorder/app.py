"""The composition root: builds the daemon's components and wires them together.

Start order: the service watchdog (READY=1 once the API is up), projector, writer, sessions
ledger, one client per identity, the export scheduler (when `[[exports]]` are configured), the
read API. Stop order is the reverse: the API stops answering, no new export starts (a running
one may finish), sockets close, the ledger writes its counters, the writer flushes and commits
what was queued, the projector catches up with it, and the watchdog, which pinged systemd
throughout, stops last.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from recorder.api import check_listen_allowed, create_app, listen
from recorder.config import Settings
from recorder.db import migrate
from recorder.db.target import DatabaseTarget
from recorder.eventlog.ledger import DatabaseSessionLedger
from recorder.eventlog.recording import CursorStore, RecordingSink, load_cursors
from recorder.eventlog.writer import EventWriter
from recorder.exports.runner import Exporter
from recorder.exports.scheduler import ExportScheduler
from recorder.identities import require_recording_settings, token_source
from recorder.metrics import Metrics
from recorder.notify import Notifier
from recorder.projection.projector import Projector
from recorder.supervisor import Supervisor
from recorder.ums.client import ClientSettings, ConsumerClient
from recorder.ums.discovery import Discovery
from recorder.ums.subscriptions import Subscriber
from recorder.watchdog import ServiceWatchdog


@dataclasses.dataclass
class App:
    writer: EventWriter
    projector: Projector
    ledger: DatabaseSessionLedger
    cursors: CursorStore
    clients: list[ConsumerClient]
    sinks: list[RecordingSink]
    supervisor: Supervisor
    metrics: Metrics
    watchdog: ServiceWatchdog
    exports: ExportScheduler | None = None

    async def run(self, stop: asyncio.Event) -> int:
        return await self.supervisor.run(stop)


def serve_api(
    runner: web.AppRunner, ready: asyncio.Event
) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    """The API component: already listening (bound in build_app), answering until stopped."""

    async def serve(stop: asyncio.Event) -> None:
        try:
            ready.set()
            await stop.wait()
        finally:
            await runner.cleanup()

    return serve


@contextlib.asynccontextmanager
async def build_app(
    settings: Settings,
    target: DatabaseTarget,
    *,
    client_settings: ClientSettings | None = None,
    notifier: Notifier | None = None,
    writer_stuck_after_s: float = 90.0,
) -> AsyncIterator[App]:
    account = require_recording_settings(settings)
    api_host, api_port = settings.api_host_port
    api_token = None if settings.api_token is None else settings.api_token.reveal()
    check_listen_allowed(api_host, api_token)
    await migrate.require_current_schema(target)
    # Shared by the sessions ledger and the read API; API requests queue here under load.
    pool = await asyncpg.create_pool(target.dsn, min_size=1, max_size=10)
    try:
        async with aiohttp.ClientSession() as http:
            writer = EventWriter(
                target,
                queue_size=settings.queue_size,
                batch_size=settings.writer_batch_size,
                batch_wait_ms=settings.writer_batch_wait_ms,
            )
            # Small folds keep the shared event loop responsive: a 5,000-event fold stalls
            # every socket for tens of milliseconds (bench/ingest.py profile).
            projector = Projector(target, batch_size=1000)
            ledger = DatabaseSessionLedger(pool, account)
            cursors = await load_cursors(pool)
            writer.add_listener(cursors.committed)
            writer.add_listener(ledger.committed)
            writer.add_listener(lambda _: projector.wake())

            discovery = Discovery(settings.csds_url, account, http)
            ums_url: Callable[[], Awaitable[str]] = discovery.ums_url
            if settings.ums_url is not None:
                fixed = settings.ums_url

                async def configured_ums_url() -> str:
                    return fixed

                ums_url = configured_ums_url

            supervisor = Supervisor()
            api_ready = asyncio.Event()
            clients: list[ConsumerClient] = []

            def identities() -> tuple[int, int]:
                return sum(1 for c in clients if c.connected), len(clients)

            watchdog = ServiceWatchdog(
                notifier or Notifier({}), writer, projector, identities, ready=api_ready,
                writer_stuck_after_s=writer_stuck_after_s,
            )
            # First: stopped last, so systemd keeps hearing from us while the rest drains.
            supervisor.add("watchdog", watchdog.run, drain_s=5)
            supervisor.add("projector", projector.run, drain_s=30)
            supervisor.add("writer", writer.run, drain_s=30)
            supervisor.add("sessions-ledger", ledger.run, drain_s=5)
            sinks: list[RecordingSink] = []
            for identity in settings.identities():
                subscriber = Subscriber(cursors, client_settings)
                sink = RecordingSink(writer, account, follower=subscriber)
                client = ConsumerClient(
                    account=account,
                    tokens=token_source(identity, account, http, discovery.idp_url),
                    ums_url=ums_url,
                    session=http,
                    handler=sink,
                    sessions=subscriber,
                    ledger=ledger,
                    settings=client_settings,
                )
                supervisor.add(f"identity {identity.name}", client.run, drain_s=10,
                               group="identities")
                clients.append(client)
                sinks.append(sink)
            metrics = Metrics()
            exports: ExportScheduler | None = None
            if settings.exports:
                exports = ExportScheduler(
                    Exporter(target, on_done=metrics.observe_export), settings.exports,
                    on_failure=metrics.export_failed,
                )
                metrics.watch_exports(job.name for job in settings.exports)
                supervisor.add("exports", exports.run, drain_s=60)
            api = create_app(pool, token=api_token, metrics_render=metrics.render)
            runner = await listen(api, api_host, api_port)  # a bad address stops us here
            try:
                # Added last: stopped first, so the API answers until the sockets close.
                supervisor.add("api", serve_api(runner, api_ready), drain_s=5)
                app = App(writer, projector, ledger, cursors, clients, sinks, supervisor,
                          metrics, watchdog, exports)
                metrics.attach(writer, projector, clients)
                yield app
            finally:
                if runner.server is not None:  # the api component did not get to run
                    await runner.cleanup()
    finally:
        await pool.close()
