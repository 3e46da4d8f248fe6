"""The composition root: builds a process's components for its roles and wires them together.

Roles (design.md): `ingest` (sockets, recording sink, writer, sessions ledger), `project`
(projector, export scheduler) and `serve` (the read API). `recorder run` runs each in its own
process (recorder.role_processes); tests and `recorder demo` compose all three in one.

Start order: the service watchdog (READY=1 once the roles here are up), commit wake-ups,
projector, writer, sessions ledger, one client per identity, the export scheduler, the read
API. Stop order is the reverse: the API stops answering, no new export starts (a running one
may finish), sockets close, the ledger writes its counters, the writer flushes and commits what
was queued, the projector catches up with it, and the watchdog stops last.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from recorder.api import check_listen_allowed, create_app, listen
from recorder.config import Settings
from recorder.coordination.coordinator import Coordinator, while_held
from recorder.coordination.leases import EXPORTS, PROJECTOR, LeaseBook, identity_resource
from recorder.db import migrate
from recorder.db.target import DatabaseTarget
from recorder.eventlog.ledger import DatabaseSessionLedger
from recorder.eventlog.recording import CursorStore, RecordingSink
from recorder.eventlog.wakeups import CommitWakeups
from recorder.eventlog.writer import EventWriter
from recorder.exports.runner import Exporter
from recorder.exports.scheduler import ExportScheduler
from recorder.history.messaging_history import MessagingHistory
from recorder.history.profiles import AgentProfiles
from recorder.history.reconciler import IdentityTokens, Reconciler, ReconnectWatch
from recorder.history.rest import RestClient
from recorder.identities import require_recording_settings, token_source
from recorder.metrics import Metrics
from recorder.notify import Notifier
from recorder.projection.projector import Projector
from recorder.supervisor import Supervisor
from recorder.ums.client import ClientSettings, ConsumerClient
from recorder.ums.discovery import Discovery
from recorder.ums.subscriptions import Subscriber
from recorder.ums.tokens import TokenSource
from recorder.watchdog import ServiceWatchdog

ROLES = ("ingest", "project", "serve")


@dataclasses.dataclass
class App:
    roles: tuple[str, ...]
    supervisor: Supervisor
    metrics: Metrics
    wakeups: CommitWakeups
    watchdog: ServiceWatchdog | None = None
    writer: EventWriter | None = None
    projector: Projector | None = None
    ledger: DatabaseSessionLedger | None = None
    cursors: CursorStore | None = None
    clients: list[ConsumerClient] = dataclasses.field(default_factory=list)
    sinks: list[RecordingSink] = dataclasses.field(default_factory=list)
    subscribers: list[Subscriber] = dataclasses.field(default_factory=list)
    exports: ExportScheduler | None = None
    coordinator: Coordinator | None = None
    profiles: AgentProfiles | None = None
    reconciler: Reconciler | None = None

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


def started(ready: asyncio.Event) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    """A component that says the roles of this process are up once every component started."""

    async def mark(stop: asyncio.Event) -> None:
        ready.set()
        await stop.wait()

    return mark


@contextlib.asynccontextmanager
async def build_app(
    settings: Settings,
    target: DatabaseTarget,
    *,
    roles: Sequence[str] = ROLES,
    client_settings: ClientSettings | None = None,
    notifier: Notifier | None = None,
    writer_stuck_after_s: float = 90.0,
) -> AsyncIterator[App]:
    unknown = sorted(set(roles) - set(ROLES))
    if unknown or not roles:
        raise ValueError(f"roles must be some of {ROLES}, got {list(roles)}")
    ingest, project, serve = (role in roles for role in ROLES)
    account = require_recording_settings(settings) if ingest else ""
    api_host, api_port = settings.api_host_port
    api_tokens = settings.api_credentials()
    if serve:
        check_listen_allowed(api_host, next(iter(api_tokens.values()), None))
    await migrate.require_current_schema(target)
    # Shared by the sessions ledger and the read API; API requests queue here under load.
    pool = await asyncpg.create_pool(target.dsn, **target.connect_options(min_size=1, max_size=10))
    try:
        # No connection limit: every identity's websocket is one connection, and aiohttp's
        # default of 100 per session left identities past the 100th waiting forever.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            supervisor = Supervisor()
            metrics = Metrics()
            ready = asyncio.Event()
            # LISTEN needs a session of its own: not through a transaction-pooling PgBouncer.
            wakeups = CommitWakeups(
                target, listen=settings.listen_notify and not ingest and not target.pooled)
            app = App(tuple(r for r in ROLES if r in roles), supervisor, metrics, wakeups)
            if ingest or project:
                app.coordinator = _coordinator(settings, pool, ingest=ingest, project=project)
                _add_writer(app, settings, target, pool, account)
            if project:
                _add_projector(app, settings, target)
            app.watchdog = ServiceWatchdog(
                notifier or Notifier({}), app.writer, app.projector,
                (lambda: (sum(1 for c in app.clients if c.connected), len(app.clients)))
                if ingest else None,
                ready=ready, writer_stuck_after_s=writer_stuck_after_s,
            )
            # First: stopped last, so systemd keeps hearing from us while the rest drains.
            supervisor.add("watchdog", app.watchdog.run, drain_s=5)
            if metrics.multiprocess:
                supervisor.add("metrics", metrics.run, drain_s=5)
            supervisor.add("commit-wakeups", wakeups.run, drain_s=5)
            if app.coordinator is not None:
                # Before its users: stopped after them, so leases are given back once unused.
                supervisor.add("coordination", app.coordinator.run, drain_s=15)
            if app.projector is not None:
                supervisor.add("projector", app.projector.run, drain_s=30)
            if app.writer is not None and app.ledger is not None:
                supervisor.add("writer", app.writer.run, drain_s=30)
                supervisor.add("sessions-ledger", app.ledger.run, drain_s=5)
                await _add_identities(app, settings, pool, http, account, client_settings)
            if project and settings.exports:
                coordinator = app.coordinator
                assert coordinator is not None
                app.exports = ExportScheduler(
                    Exporter(target, on_done=metrics.observe_export), settings.exports,
                    on_failure=metrics.export_failed,
                    allowed=lambda: coordinator.holding(EXPORTS) is not None,
                )
                metrics.watch_exports(job.name for job in settings.exports)
                supervisor.add("exports", app.exports.run, drain_s=60)
            if app.writer is not None:
                metrics.attach_writer(app.writer, app.clients, app.subscribers)
            if app.projector is not None:
                metrics.attach_projector(app.projector)
            if app.coordinator is not None:
                metrics.attach_coordinator(app.coordinator)
            if not serve:
                supervisor.add("started", started(ready), drain_s=1)
                yield app
                return
            api = create_app(pool, tokens=api_tokens, metrics_render=metrics.render,
                             commits=wakeups)
            # A bad address stops us here; workers of one port share it by SO_REUSEPORT.
            runner = await listen(api, api_host, api_port, reuse_port=settings.api_workers > 1)
            try:
                # Added last: stopped first, so the API answers until the sockets close.
                supervisor.add("api", serve_api(runner, ready), drain_s=5)
                yield app
            finally:
                if runner.server is not None:  # the api component did not get to run
                    await runner.cleanup()
    finally:
        await pool.close()


def _coordinator(settings: Settings, pool: asyncpg.Pool, *, ingest: bool,
                 project: bool) -> Coordinator:
    """The leases of this process's roles: a fair share of the identities for `ingest`, the
    projector and export singletons for `project`."""
    singletons = [PROJECTOR, *([EXPORTS] if settings.exports else [])] if project else []
    return Coordinator(
        LeaseBook(pool, settings.instance_name, settings.lease_ttl_s),
        roles=[r for r, present in (("ingest", ingest), ("project", project)) if present],
        host=socket.gethostname(), pid=os.getpid(),
        shared=[identity_resource(i.name) for i in settings.identities()] if ingest else [],
        singletons=singletons,
    )


def _add_writer(app: App, settings: Settings, target: DatabaseTarget, pool: asyncpg.Pool,
                account: str) -> None:
    app.writer = EventWriter(
        target,
        lock_key=None,  # every instance writes: the table lock orders them
        queue_size=settings.queue_size,
        batch_size=settings.writer_batch_size,
        batch_wait_ms=settings.writer_batch_wait_ms,
    )
    app.ledger = DatabaseSessionLedger(pool, account)
    app.writer.add_listener(app.ledger.committed)
    app.writer.add_listener(app.wakeups.committed)  # readers in this process look at once


def _add_projector(app: App, settings: Settings, target: DatabaseTarget) -> None:
    # Small folds keep a shared event loop responsive: a 5,000-event fold stalls every socket
    # in the same process for tens of milliseconds (bench/ingest.py profile).
    app.projector = Projector(target, batch_size=1000 if app.writer is not None else 5000,
                              coordinator=app.coordinator)
    app.wakeups.subscribe(app.projector.wake)


async def _add_identities(
    app: App, settings: Settings, pool: asyncpg.Pool, http: aiohttp.ClientSession,
    account: str, client_settings: ClientSettings | None,
) -> None:
    assert app.writer is not None and app.ledger is not None
    app.cursors = CursorStore(pool, settings.closed_grace_s)  # refreshed as sessions open
    app.writer.add_listener(app.cursors.committed)
    discovery = Discovery(settings.csds_url, account, http)
    ums_url: Callable[[], Awaitable[str]] = discovery.ums_url
    if settings.ums_url is not None:
        fixed = settings.ums_url

        async def configured_ums_url() -> str:
            return fixed

        ums_url = configured_ums_url
    sources = [(identity.name, token_source(identity, account, http, discovery.idp_url))
               for identity in settings.identities()]
    _add_history(app, settings, pool, http, account, discovery, sources)
    for identity, (_, tokens) in zip(settings.identities(), sources, strict=True):
        subscriber = Subscriber(app.cursors, client_settings,
                                closed_grace_s=settings.closed_grace_s)
        sink = RecordingSink(app.writer, account, follower=subscriber, agents=app.profiles)
        client = ConsumerClient(
            account=account,
            tokens=tokens,
            ums_url=ums_url,
            session=http,
            handler=sink,
            sessions=(subscriber if app.reconciler is None
                      else ReconnectWatch(subscriber, app.reconciler)),
            ledger=app.ledger,
            settings=client_settings,
        )
        assert app.coordinator is not None
        app.supervisor.add(
            f"identity {identity.name}",
            while_held(app.coordinator, identity_resource(identity.name), client.run),
            drain_s=10, group="identities",
        )
        app.clients.append(client)
        app.sinks.append(sink)
        app.subscribers.append(subscriber)


def _add_history(
    app: App, settings: Settings, pool: asyncpg.Pool, http: aiohttp.ClientSession,
    account: str, discovery: Discovery, sources: list[tuple[str, TokenSource]],
) -> None:
    """Agent profiles and reconciliation with LivePerson's history, on the ingest role's
    writer, for the identities this instance holds."""
    if not (settings.agent_profiles or settings.reconcile):
        return
    assert app.writer is not None and app.coordinator is not None
    coordinator, metrics = app.coordinator, app.metrics
    rest = RestClient(http, requests_per_minute=settings.rest_requests_per_minute,
                      server_error_delays_s=settings.rest_retry_s, observe=metrics.observe_rest)
    if settings.agent_profiles:
        app.profiles = AgentProfiles(rest, discovery.agent_profile_url, app.writer.put, pool,
                                     account, ttl_s=settings.agent_profile_ttl_s,
                                     observe=metrics.observe_profile)
        app.supervisor.add("agent-profiles", app.profiles.run, drain_s=5)
    if settings.reconcile:
        tokens = IdentityTokens(
            sources, held=lambda name: coordinator.holding(identity_resource(name)) is not None)
        app.reconciler = Reconciler(
            pool, app.writer.put, MessagingHistory(rest, discovery.history_url, account),
            tokens, account, after_s=settings.reconcile_after_s,
            retry_s=settings.reconcile_retry_s,
            requests_per_minute=settings.rest_requests_per_minute,
            observe=lambda o: metrics.observe_reconciliation(o.status, o.only_in_log))
        app.supervisor.add("reconciler", app.reconciler.run, drain_s=10)
