"""The daemon's Prometheus metrics, served by `GET /metrics` (design.md section 5).

- One `CollectorRegistry` per `Metrics`, not the global one: tests and several apps in one
  process do not collide.
- Roles in their own processes (recorder.role_processes): prometheus_client's multiprocess
  mode, with `PROMETHEUS_MULTIPROC_DIR` set by the supervisor for every role. Counters and
  histograms add up across processes; gauges say how (`max`, or `livemax` for values only a
  live process can vouch for). The role that owns a live object samples it every second
  (`run`); `/metrics` in any serve worker renders the sum of all of them.
- Counters of what the writer committed are fed by its commit listener (`observe_commit`).
- Everything read from live objects (log head, projection lag, connection state, session
  closes, 429 answers) is sampled by `refresh()` at render time, so nothing polls in between.
  Closes and 429s are counted as deltas since the last render: nothing is counted twice.
- Labels are bounded: event kind, close code, configured identity name. Never a conversation,
  dialog, session or consumer id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from recorder.coordination.leases import IDENTITY_PREFIX
from recorder.eventlog.appender import AppendResult
from recorder.eventlog.records import HISTORY_EVENT_TYPE, KINDS

if TYPE_CHECKING:
    from recorder.coordination.coordinator import Coordinator
    from recorder.eventlog.writer import EventWriter
    from recorder.projection.projector import Projector
    from recorder.ums.client import ConsumerClient
    from recorder.ums.subscriptions import Subscriber

__all__ = ["Metrics", "RoleMetrics", "use_multiprocess_dir"]

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: How often a role process samples its live objects into the shared files.
SAMPLE_EVERY_S = 1.0


def use_multiprocess_dir(directory: str) -> None:
    """Make metrics created from now on in this process shared through `directory`.

    prometheus_client picks its value class when it is imported; the supervisor decides on the
    directory later, so it is picked again here. Child processes inherit the variable.
    """
    os.environ[MULTIPROCESS_ENV] = directory
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_ENV) or None

#: Events per committed batch (the writer's default batch size is 1,000).
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)
#: Frame received -> batch committed; the design's budget is p99 <= 10 ms.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_stored = Counter(
            "recorder_events_stored", "Events newly stored in the log, by kind.",
            ["kind"], registry=r,
        )
        self.duplicates_dropped = Counter(
            "recorder_duplicates_dropped",
            "Events dropped because their key was already in the log or the batch, by kind.",
            ["kind"], registry=r,
        )
        self.frames_quarantined = Counter(
            "recorder_frames_quarantined",
            "Frames or events that could not be stored and went to the quarantine table.",
            registry=r,
        )
        self.reconnects = Counter(
            "recorder_reconnects",
            "Websocket sessions that ended, by close code (none: dropped without a close "
            "frame); each is followed by a reconnect unless the daemon is stopping.",
            ["code"], registry=r,
        )
        self.rate_limited = Counter(
            "recorder_rate_limited", "Requests answered 429 by UMS (retried or not).",
            registry=r,
        )
        self.batch_events = Histogram(
            "recorder_writer_batch_events",
            "Items (stored, duplicate and quarantined) per committed writer batch.",
            buckets=BATCH_BUCKETS, registry=r,
        )
        self.commit_latency = Histogram(
            "recorder_commit_latency_seconds",
            "Per stored event: time from the frame's arrival (received_at) until its batch "
            "committed.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.log_head = Gauge(
            "recorder_log_head", "Position of the newest committed event.", registry=r,
            multiprocess_mode="max",
        )
        self.projection_lag_events = Gauge(
            "recorder_projection_lag_events",
            "Events committed to the log but not yet in the projection tables.", registry=r,
            multiprocess_mode="livemax",
        )
        self.projection_lag_seconds = Gauge(
            "recorder_projection_lag_seconds",
            "For the last batch the projector applied: how long after its newest event was "
            "recorded it was applied (0 before the first batch).", registry=r,
            multiprocess_mode="livemax",
        )
        self.identity_connected = Gauge(
            "recorder_identity_connected",
            "1 while the identity has an open websocket session, else 0.",
            ["identity"], registry=r, multiprocess_mode="livemax",
        )
        self.followed_dialogs = Gauge(
            "recorder_identity_followed_dialogs",
            "Dialogs the identity keeps subscribed: those of open conversations and of "
            "conversations closed within RECORDER_CLOSED_GRACE_S.",
            ["identity"], registry=r, multiprocess_mode="livemax",
        )
        self.released_dialogs = Counter(
            "recorder_released_dialogs",
            "Dialogs let go of after their conversation stayed closed past the grace window.",
            ["identity"], registry=r,
        )
        self.leases_held = Gauge(
            "recorder_leases_held",
            "Leases this instance holds, by kind (identity, projector, exports).",
            ["kind"], registry=r, multiprocess_mode="livesum",
        )
        self.lease_takeovers = Counter(
            "recorder_lease_takeovers",
            "Leases this instance took after their previous holder's lease expired.",
            registry=r,
        )
        self.instances_live = Gauge(
            "recorder_instances_live",
            "Instances with a live ingest process, as this instance last counted them.",
            registry=r, multiprocess_mode="livemax",
        )
        self.last_export = Gauge(
            "recorder_last_export_timestamp_seconds",
            "Unix time of the last successful export (0: none yet).", registry=r,
            multiprocess_mode="max",
        )
        self.export_rows = Counter(
            "recorder_export_rows",
            "Rows written to export files by scheduled or named runs, by job.",
            ["job"], registry=r,
        )
        self.export_failures = Counter(
            "recorder_export_failures",
            "Scheduled export runs that failed (the next run redoes their window), by job.",
            ["job"], registry=r,
        )
        self.rest_requests = Counter(
            "recorder_rest_requests",
            "Requests to LivePerson's REST services (agent profiles, messaging history), by "
            "endpoint and HTTP status (0: no answer); retries count.",
            ["endpoint", "status"], registry=r,
        )
        self.backfilled = Counter(
            "recorder_backfilled_events",
            "Events appended from LivePerson's messaging history: the socket never delivered "
            "them.", registry=r,
        )
        self.reconciliations = Counter(
            "recorder_reconciliations",
            "Conversations checked against LivePerson's history, by result (reconciled, "
            "partial, failed, skipped).", ["result"], registry=r,
        )
        self.only_in_log = Counter(
            "recorder_reconcile_only_in_log_events",
            "Events the log holds that LivePerson's history lacked when checked (reported, "
            "never deleted).", registry=r,
        )
        self.agent_profiles = Counter(
            "recorder_agent_profiles_fetched",
            "Agent public profiles fetched, by result (known, unknown: a 404, failed).",
            ["result"], registry=r,
        )
        for result in ("reconciled", "partial", "failed", "skipped"):
            self.reconciliations.labels(result=result)
        for kind in KINDS:  # every kind shows, at 0, before its first event
            self.events_stored.labels(kind=kind)
            self.duplicates_dropped.labels(kind=kind)
        self._writer: EventWriter | None = None
        self._projector: Projector | None = None
        self._clients: list[ConsumerClient] = []
        #: per client (by position in _clients): closes and 429s already counted
        self._closes_counted: list[int] = []
        self._rate_limited_counted: list[int] = []
        self._coordinator: Coordinator | None = None
        self._takeovers_counted = 0
        self._subscribers: list[Subscriber | None] = []
        self._released_counted: list[int] = []

    # -- wiring --------------------------------------------------------------------------------

    @property
    def multiprocess(self) -> bool:
        """True when the roles run in processes of their own and share metric files."""
        return multiprocess_dir() is not None

    def attach(
        self, writer: EventWriter, projector: Projector, clients: Iterable[ConsumerClient]
    ) -> None:
        """All roles in one process: the writer's commits, the projector and the clients."""
        self.attach_writer(writer, clients)
        self.attach_projector(projector)

    def attach_writer(
        self, writer: EventWriter, clients: Iterable[ConsumerClient],
        subscribers: Iterable[Subscriber | None] = (),
    ) -> None:
        """The ingest role: listen to the writer's commits, sample the clients (and each
        one's subscriber, by position)."""
        writer.add_listener(self.observe_commit)
        self._writer = writer
        for client, subscriber in itertools.zip_longest(clients, subscribers):
            if client is not None:
                self.watch_client(client, subscriber)

    def attach_coordinator(self, coordinator: Coordinator) -> None:
        """Sample this process's leases."""
        self._coordinator = coordinator
        for kind in ("identity", "projector", "exports"):
            self.leases_held.labels(kind=kind).set(0)

    def attach_projector(self, projector: Projector) -> None:
        """The project role: sample the projector's position and lag."""
        self._projector = projector

    def watch_client(self, client: ConsumerClient, subscriber: Subscriber | None = None) -> None:
        """Sample this client's connection state, closes and 429 answers, and its subscriber's
        followed and released dialogs, at render time."""
        self._clients.append(client)
        self._closes_counted.append(0)
        self._rate_limited_counted.append(0)
        self._subscribers.append(subscriber)
        self._released_counted.append(0)
        self.identity_connected.labels(identity=client.name).set(0)
        if subscriber is not None:
            self.followed_dialogs.labels(identity=client.name).set(0)
            self.released_dialogs.labels(identity=client.name)

    # -- inputs --------------------------------------------------------------------------------

    def observe_commit(self, result: AppendResult) -> None:
        """The writer's commit listener: quick, and never raises on a well-formed result."""
        committed_at = time.time()
        stored: collections.Counter[str] = collections.Counter()
        observe = self.commit_latency.observe
        backfilled = 0
        for _, event in result.stored:
            stored[event.kind] += 1
            observe(max(0.0, committed_at - event.received_at))
            if event.type == HISTORY_EVENT_TYPE:
                backfilled += 1
        if backfilled:
            self.backfilled.inc(backfilled)
        for kind, count in stored.items():  # one increment per kind and batch, not per event
            self.events_stored.labels(kind=_kind(kind)).inc(count)
        dropped = collections.Counter(event.kind for event in result.duplicates)
        for kind, count in dropped.items():
            self.duplicates_dropped.labels(kind=_kind(kind)).inc(count)
        if result.quarantined:
            self.frames_quarantined.inc(len(result.quarantined))
        size = len(result.stored) + len(result.duplicates) + len(result.quarantined)
        if size:
            self.batch_events.observe(size)
        self.log_head.set(result.head)

    def observe_rest(self, endpoint: str, status: int) -> None:
        self.rest_requests.labels(endpoint=endpoint, status=str(status)).inc()

    def observe_reconciliation(self, result: str, only_in_log: int) -> None:
        self.reconciliations.labels(result=result).inc()
        if only_in_log:
            self.only_in_log.inc(only_in_log)

    def observe_profile(self, result: str) -> None:
        self.agent_profiles.labels(result=result).inc()

    def mark_export(self, ts: float) -> None:
        """An export finished successfully at Unix time `ts` (for the export job)."""
        self.last_export.set(ts)

    def watch_exports(self, jobs: Iterable[str]) -> None:
        """Show every configured job's counters, at 0, before its first run."""
        for job in jobs:
            self.export_rows.labels(job=job)
            self.export_failures.labels(job=job)

    def observe_export(self, job: str | None, manifest: Mapping[str, Any]) -> None:
        """The exporter's listener: a run committed its checkpoint."""
        if job is not None:
            self.export_rows.labels(job=job).inc(int(manifest.get("rows") or 0))
        self.mark_export(time.time())

    def export_failed(self, job: str) -> None:
        self.export_failures.labels(job=job).inc()

    # -- output --------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Sample the live objects into the gauges and counters."""
        if self._coordinator is not None:
            self._refresh_leases(self._coordinator)
        if self._writer is not None:
            self.log_head.set(self._writer.head)
        if self._projector is not None:
            projector = self._projector
            head = max(projector.head, self._writer.head if self._writer is not None else 0)
            if not projector.is_leader:  # a passive projector vouches for nothing
                self.projection_lag_events.set(0)
                self.projection_lag_seconds.set(0.0)
                return self._refresh_clients()
            self.projection_lag_events.set(max(0, head - projector.position))
            self.projection_lag_seconds.set(projector.lag_s or 0.0)
        self._refresh_clients()

    def _refresh_leases(self, coordinator: Coordinator) -> None:
        held = collections.Counter(
            "identity" if resource.startswith(IDENTITY_PREFIX) else resource
            for resource in coordinator.holds)
        for kind in ("identity", "projector", "exports"):
            self.leases_held.labels(kind=kind).set(held.get(kind, 0))
        if coordinator.takeovers > self._takeovers_counted:
            self.lease_takeovers.inc(coordinator.takeovers - self._takeovers_counted)
            self._takeovers_counted = coordinator.takeovers
        if coordinator.shared:
            self.instances_live.set(coordinator.live_instances)

    def _refresh_clients(self) -> None:
        for index, client in enumerate(self._clients):
            self.identity_connected.labels(identity=client.name).set(1 if client.connected else 0)
            closes = client.closes
            for close in closes[self._closes_counted[index]:]:
                code = "none" if close.code is None else str(close.code)
                self.reconnects.labels(code=code).inc()
            self._closes_counted[index] = len(closes)
            new_429s = client.rate_limited - self._rate_limited_counted[index]
            if new_429s > 0:
                self.rate_limited.inc(new_429s)
            self._rate_limited_counted[index] = client.rate_limited
            subscriber = self._subscribers[index]
            if subscriber is not None:
                self.followed_dialogs.labels(identity=client.name).set(len(subscriber.dialogs))
                released = subscriber.released - self._released_counted[index]
                if released > 0:
                    self.released_dialogs.labels(identity=client.name).inc(released)
                self._released_counted[index] = subscriber.released

    async def run(self, stop: asyncio.Event) -> None:
        """Roles in processes: sample this process's live objects into the shared files."""
        while not stop.is_set():
            self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)
        self.refresh()

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type, for `GET /metrics`."""
        self.refresh()
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        shared = CollectorRegistry()
        multiprocess.MultiProcessCollector(shared, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(shared), CONTENT_TYPE_LATEST


def _kind(kind: str) -> str:
    """The event kind as a label: one of KINDS, whatever the record says."""
    return kind if kind in KINDS else "other"


class RoleMetrics:
    """The supervisor's own metrics: which role processes are up, and how often each restarted."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.up = Gauge(
            "recorder_role_up", "1 while the role's process runs and is ready, else 0.",
            ["role"], registry=self.registry, multiprocess_mode="livemax",
        )
        self.restarts = Counter(
            "recorder_role_restarts",
            "Times the supervisor restarted a role's process after it ended unasked.",
            ["role"], registry=self.registry,
        )

    def watch(self, role: str) -> None:
        self.up.labels(role=role).set(0)
        self.restarts.labels(role=role)


def process_ended(pid: int) -> None:
    """Drop a dead process's live gauges (its counters and histograms still count)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
