"""Ingest through the whole daemon, against references from the same run on the same server:
a raw COPY of the same rows, and the bare writer fed the same rows at the same rate.

    python bench/ingest.py [--events N] [--consumers C] [--paced-rate R] [--phases ...]
                           [--layout roles|inprocess|both]

The path measured is the one `recorder run` takes: simulator -> websocket -> client parse ->
sink (key derivation) -> bounded queue -> writer -> commit -> NOTIFY -> projector, built by
`recorder.app.build_app` and driven by the simulator's seeded traffic generator.

Layouts (--layout):
  roles      as `recorder run` runs them (the default): `ingest` and `project` each in a child
             process of its own (multiprocessing, spawn), each calling
             `build_app(settings, target, roles=[role])`, with the probes below installed
             inside it, metrics in shared files as under `recorder run`, and its samples sent
             back over a pipe at the end of each run. The projector hears of commits by
             LISTEN/NOTIFY, as across processes in production. Metrics go to
             prometheus_client's multiprocess files, as under `recorder run` (--metrics
             memory keeps them in process memory instead, to see what the files cost).
  inprocess  every role in this process (`recorder demo`, the in-process tests): the bench as
             it was before the roles had processes of their own.
  both       roles, then inprocess, in one run, each summarised.

Phases (full, full_inproc, paced and bare per layout):
  sim      the traffic generator alone (model only, no sockets, no daemon): its ceiling.
  full     full speed, the simulator in a child process so the daemon has a core of its own
           (the headline figure; a real UMS is remote), then, inprocess only, again with the
           simulator in this process, on the daemon's event loop (`full_inproc`). Throughput
           is rows committed from the start of the traffic to the last commit. Each run is
           checked against the simulator's truth: no missing or duplicated (dialog, sequence),
           every conversation's last state recorded, positions contiguous.
  paced    open loop at --paced-rate events/s (capped at 90% of the full-speed rate):
           frame received -> committed latency, and commit -> projected lag. When that rate
           is not sustained (see --sustained-p50-ms), again at 60% and then 30% of it.
  bare     the reference for the paced run's latency: the bare EventWriter (no sockets, no
           projector; recorder.app's writer settings) in a child process of its own, fed the
           rows the first paced run stored, in their order, open loop at the same rate, into a
           sibling database on the same server (dedupe keys salted; payloads unchanged).
           received_at is stamped as a row is handed to the writer, the commit time is read
           in a commit listener: measured as the daemon's frame -> commit latency is.
  copy     asyncpg COPY of the rows the (first layout's) full-speed run stored into
           `LIKE events INCLUDING ALL`: the reference for throughput.
  memory   a fresh process (its RSS not inflated by the runs before) running the ingest role
           alone (roles layout; it holds the sockets and subscriptions) or every role
           (inprocess): RSS with every socket open and subscribed to conversations, then with
           D dialogs subscribed.

Budgets (issue 14), each against its reference from the same run:
  ratio                      full-speed events/s / COPY events/s of the same rows   >= 0.4
  p99_commit_ratio           paced p99 frame -> commit / bare writer's p99          <= 2
  p99_projection_lag_ms      paced p99 commit -> projected, per event               <= 25 ms
  p99_projection_lag_ratio   p99_projection_lag_ms / bare writer's p99 commit       <= 3
  kib_per_dialog             RSS per open dialog subscription                       <= 8 KiB
The earlier absolute budgets (>= 20,000 events/s, p99 commit <= 10 ms) are reported apart
(`within_absolute_budget`): on a shared 2-core machine the same-run ratios are what hold.

With RECORDER_DATABASE_URL set, works in a scratch database `recorder_bench_<pid>` on that
server (created, migrated, dropped); otherwise starts the embedded server in a temporary
state directory (see bench/append.py, whose database rule and COPY baseline this reuses).

How the figures are taken:
- commit latency: a writer listener (in the ingest process) reads the clock once per commit;
  each stored event's latency is that time minus its `received_at`, the time its frame came
  off the socket.
- projection lag, per event: the projector's `position` attribute is watched (in the project
  process): its class is swapped for a subclass whose `position` setter records (value,
  monotonic time) on every assignment, i.e. once the fold's transaction committed (exact, no
  polling; if `position` is a property instead, a task polls it every 0.5 ms). An event's lag
  is the first time `position` >= its position minus the time its commit was heard by the
  writer's listener. time.monotonic is CLOCK_MONOTONIC: one clock across the processes.
  (`p99_projection_lag_per_commit_ms` is the older per-commit figure; frame -> projection
  adds each event's commit latency to its lag.)
- CPU: each role process (or the one daemon process), this process (the bench: in the roles
  layout it only polls the roles), the simulator child, the server's postmaster and its
  children, running or reaped (the writer's and the projector's backends also apart), and
  the rest of the machine, from /proc, over each run's window; per event too, which is
  steadier than rates on a shared machine ("other_processes" says how much else was
  running). `simulator_cpu_share` is the simulator's CPU over all CPU of the run's processes
  and the server: it shares the two cores and is not part of the product.
- GC pauses: per process (gc.callbacks), over the window; event loop lag: per process, how
  late a 5 ms sleep wakes (what the writer's next round trip waits for the sockets' work on
  the same loop, and for a CPU on a busy machine).
- the writer's transactions: its appender's `append` is wrapped to time each batch (lock,
  positions, COPY, cursors, NOTIFY, commit), in the daemon and in the bare writer alike; an
  event's latency splits into the time before its batch's transaction began (socket, parse,
  sink, queue, batch window: `*_before_commit_ms`) and the transaction (`*_append_ms`).
- `received_at` is stamped when the frame comes off the socket, so time a frame waits in
  socket buffers while the reader is held back (queue full) is not in the latency: read the
  latency of a paced run that was sustained (see --sustained-p50-ms).

--profile PATH writes cProfile statistics of the full-speed run: the ingest process (the
daemon, inprocess) to PATH, the project process to PATH.project and the simulator child to
PATH.sim (`python -m pstats PATH`); with --layout both, the inprocess run's to PATH.inprocess.

Human-readable progress goes to stderr; the last line on stdout is one JSON object.
Timings are reported, never asserted: only a correctness failure exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import gc
import inspect
import itertools
import logging
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import asyncpg

# bench/ is not a package: reuse append.py's database rule, COPY baseline and helpers, and
# roles.py's child processes and /proc readings.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from append import (
    COPY_COLUMNS,
    CorrectnessError,
    admin,
    bench_database,
    percentile_ms,
    report,
    run_copy,
    say,
    server_settings,
    with_database,
)
from roles import (
    BackendCpu,
    ChildProcess,
    CpuWindow,
    GcPauses,
    LoopLag,
    log_head,
    per_event_us,
    pid_cpu_s,
    postgres_cpu_s,
    postmaster_pid,
    process_cpu_s,
    projection_lags,
    rounded,
    rss_kib,
    serve_commands,
    server_pid,
)

from recorder.app import ROLES, App, build_app
from recorder.cli import run_event_loop
from recorder.config import ConsumerIdentity, Secret, load_settings
from recorder.daemon import tune_garbage_collector
from recorder.db import migrate
from recorder.db.target import DatabaseTarget
from recorder.eventlog.appender import AppendResult
from recorder.eventlog.records import EventRecord, dedupe_digest
from recorder.eventlog.writer import EventWriter
from recorder.metrics import use_multiprocess_dir
from recorder.simulator import Simulator
from recorder.ums.client import ClientSettings

#: Issue 14's budgets, each against a reference measured in the same run.
BUDGET = {
    "ratio_min": 0.4,  # full-speed events/s / COPY events/s
    "p99_commit_ratio_max": 2.0,  # paced p99 frame -> commit / bare writer's p99
    "p99_projection_lag_ms_max": 25.0,
    "p99_projection_lag_ratio_max": 3.0,  # p99 projection lag / bare writer's p99 commit
    "kib_per_dialog_max": 8.0,
}
#: The earlier absolute budgets, reported apart (noisy on a shared machine).
ABSOLUTE_BUDGET = {"events_per_s_min": 20_000, "p99_commit_ms_max": 10.0}
ACCOUNT = "71234567"
PHASES = ("sim", "full", "full_inproc", "paced", "bare", "copy", "memory")
LAYOUTS = ("roles", "inprocess")


# -- the simulator, here or in a child process ---------------------------------------------------


class SimControl:
    """Commands on one simulator; run in this process or in the child behind a pipe."""

    def __init__(self, seed: int) -> None:
        self.sim = Simulator(account=ACCOUNT, seed=seed, keep_journal=False)

    async def start(self) -> str:
        await self.sim.start()
        return self.sim.ws_url

    async def stop(self) -> None:
        await self.sim.stop()

    def new_consumers(self, count: int) -> list[tuple[str, str]]:
        subs = [self.sim.new_consumer() for _ in range(count)]
        return [(sub, self.sim.token_for(sub)) for sub in subs]

    async def wait_ready(self, connections: int, timeout_s: float) -> int:
        """Until that many sockets are open with their ExConversations subscription."""
        deadline = time.monotonic() + timeout_s
        while True:
            ready = sum(
                1 for c in self.sim.server.hub.connections.values()
                if c.ex_subscriptions and not c.closed
            )
            if ready >= connections or time.monotonic() > deadline:
                return ready
            await asyncio.sleep(0.01)

    async def traffic(
        self, subs: list[str], conversations: int, rate: float, total: int
    ) -> dict[str, float]:
        """Run the traffic generator to its end; returns its count and its own timings."""
        cpu = time.process_time()
        started_wall, started = time.time(), time.perf_counter()
        steps = await self.sim.start_traffic(subs, conversations, rate, total_events=total)
        generated = time.perf_counter() - started
        return {
            "steps": steps,
            "started_at": started_wall,
            "generate_s": generated,
            "cpu_s": time.process_time() - cpu,
        }

    def truth(self, subs: list[str]) -> dict[str, Any]:
        """What a correct recorder holds for these consumers: sequenced events, final states."""
        world = self.sim.world
        sequenced: list[tuple[str, int]] = []
        conversations: dict[str, int] = {}
        dialogs = 0
        for sub in subs:
            for conv_id in world.by_consumer.get(sub, []):
                conv = world.conversations[conv_id]
                conversations[conv_id] = conv.meta_ts
                for dialog in conv.dialogs:
                    dialogs += 1
                    sequenced.extend((dialog.dialog_id, e["sequence"]) for e in dialog.events)
        return {"sequenced": sequenced, "conversations": conversations, "dialogs": dialogs}

    async def make_dialogs(self, subs: list[str], per_consumer: int) -> int:
        """Per consumer, `per_consumer` conversations: opened, one message, closed (no survey)."""
        made = 0
        for round_ in range(per_consumer):
            for sub in subs:
                conv = self.sim.create_conversation(sub)
                self.sim.consumer_message(conv, f"hello {round_}")
                self.sim.close_conversation(conv, by="CONSUMER", survey=False)
                made += 1
            await asyncio.sleep(0)  # let the sockets write
        return made

    def subscribed(self) -> int:
        return sum(len(c.dialog_subscriptions) for c in self.sim.server.hub.connections.values())

    def frames_sent(self) -> int:
        return sum(c.frames_sent for c in self.sim.server.hub.connections.values())


class LocalSim:
    """The simulator on this process's event loop."""

    def __init__(self, seed: int) -> None:
        self._control = SimControl(seed)
        self.ws_url = ""
        self.pid = os.getpid()

    async def start(self) -> None:
        self.ws_url = await self._control.start()

    async def call(self, command: str, *args: Any) -> Any:
        result = getattr(self._control, command)(*args)
        return await result if inspect.isawaitable(result) else result

    async def stop(self) -> None:
        await self._control.stop()


def simulator_process(pipe: Connection, seed: int, profile: str | None) -> None:
    """Entry point of the simulator child: serve SimControl commands until `stop`."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="sim %(levelname)s %(name)s: %(message)s")
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    try:
        asyncio.run(_serve_simulator(pipe, seed))
    finally:
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)


async def _serve_simulator(pipe: Connection, seed: int) -> None:
    control = SimControl(seed)
    loop = asyncio.get_running_loop()
    pipe.send((True, await control.start()))
    try:
        while True:
            command, args = await loop.run_in_executor(None, pipe.recv)
            if command == "stop":
                break
            try:
                result = getattr(control, command)(*args)
                if inspect.isawaitable(result):
                    result = await result
                pipe.send((True, result))
            except Exception as exc:
                pipe.send((False, f"{type(exc).__name__}: {exc}"))
    finally:
        await control.stop()
        pipe.send((True, None))


class ChildSim:
    """The simulator in a spawned child process, so it has a core of its own."""

    def __init__(self, seed: int, profile: str | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child_end = context.Pipe()
        self._process = context.Process(
            target=simulator_process, args=(child_end, seed, profile), name="simulator",
            daemon=True,
        )
        self.ws_url = ""
        self.pid = 0

    async def _receive(self) -> Any:
        ok, value = await asyncio.get_running_loop().run_in_executor(None, self._pipe.recv)
        if not ok:
            raise RuntimeError(f"simulator child: {value}")
        return value

    async def start(self) -> None:
        self._process.start()
        self.ws_url = await asyncio.wait_for(self._receive(), 60)
        self.pid = self._process.pid or 0

    async def call(self, command: str, *args: Any) -> Any:
        self._pipe.send((command, args))
        return await self._receive()

    async def stop(self) -> None:
        if self._process.is_alive():
            self._pipe.send(("stop", ()))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._receive(), 15)
        await asyncio.get_running_loop().run_in_executor(None, self._process.join, 10)
        if self._process.is_alive():
            self._process.kill()


@contextlib.asynccontextmanager
async def simulator(where: str, seed: int, profile: str | None = None) -> AsyncIterator[Any]:
    sim: LocalSim | ChildSim = LocalSim(seed) if where == "local" else ChildSim(seed, profile)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


# -- the daemon and what we measure on it --------------------------------------------------------


class Probe:
    """Writer listener and projector watcher for one daemon run, or for one role process (the
    ingest role has only the writer side, the project role only the projector side)."""

    def __init__(self, light: bool = False) -> None:
        #: light: count only (the memory phase, where per-event samples would be measured too)
        self.light = light
        #: per stored event, in commit order: frame received -> commit heard (s), its position,
        #: and the monotonic time its commit was heard
        self.latencies: list[float] = []
        self.positions: list[int] = []
        self.committed: list[float] = []
        self.commits: list[tuple[int, float]] = []  # (head, monotonic time) per commit
        #: per batch appended: (seconds its transaction took, events); per stored event: the
        #: seconds from received_at to its batch's transaction start
        self.appends: list[tuple[float, int]] = []
        self.before: list[float] = []
        self.projected: list[tuple[int, float]] = []  # (position, monotonic time) per change
        self.keys: set[tuple[str, int]] = set()
        self.stored = 0
        self.duplicates = 0
        self.last_commit_wall = 0.0
        self.projection_method = "none"
        self._poller: asyncio.Task[None] | None = None

    def on_commit(self, result: AppendResult) -> None:
        # One clock read per commit: every event in it became durable at the same moment.
        now, mono = time.time(), time.monotonic()
        self.duplicates += len(result.duplicates)
        if not result.stored:
            return
        self.stored += len(result.stored)
        self.last_commit_wall = now
        if self.light:
            return
        self.commits.append((result.head, mono))
        latencies, positions, keys = self.latencies, self.positions, self.keys
        append_s = self.appends[-1][0] if self.appends else 0.0
        started = now - append_s
        before = self.before
        for position, record in result.stored:
            latencies.append(now - record.received_at)
            before.append(started - record.received_at)
            positions.append(position)
            if record.sequence is not None and record.dialog_id is not None:
                keys.add((record.dialog_id, record.sequence))
        self.committed.extend(itertools.repeat(mono, len(result.stored)))

    def on_projected(self, position: Any) -> None:
        if isinstance(position, int):
            self.projected.append((position, time.monotonic()))

    def attach(self, app: App) -> None:
        if app.writer is not None:
            app.writer.add_listener(self.on_commit)
            time_appends(app.writer, self.appends)
        projector = app.projector
        if projector is None:
            return
        if watch_attribute(projector, "position", self.on_projected):
            self.projection_method = "position setter (exact)"
        else:
            self.projection_method = "polling position every 0.5 ms"
            self._poller = asyncio.create_task(self._poll(projector))

    async def _poll(self, projector: Any) -> None:
        last = None
        while True:
            position = projector.position
            if position != last:
                last = position
                self.on_projected(position)
            await asyncio.sleep(0.0005)

    def detach(self) -> None:
        if self._poller is not None:
            self._poller.cancel()

    def projected_position(self) -> int:
        return self.projected[-1][0] if self.projected else 0

    def reset(self) -> None:
        for samples in (self.latencies, self.positions, self.committed, self.commits,
                        self.appends, self.before):
            samples.clear()
        self.keys.clear()
        self.stored = self.duplicates = 0

    def ingest_data(self) -> dict[str, Any]:
        """What the writer side saw since the last reset (sent over a pipe by a role process)."""
        return {"latencies": self.latencies, "positions": self.positions,
                "committed": self.committed, "commits": self.commits, "stored": self.stored,
                "appends": self.appends, "before": self.before,
                "duplicates": self.duplicates, "last_commit_wall": self.last_commit_wall}

    def project_data(self) -> dict[str, Any]:
        return {"projected": self.projected, "projection_method": self.projection_method}


def per_commit_lags(commits: Sequence[tuple[int, float]], projected: Sequence[tuple[int, float]],
                    ) -> tuple[list[float], int]:
    """Per commit, seconds until the projector's position reached its head; and how many
    commits were never seen projected."""
    lags: list[float] = []
    j = 0
    unprojected = 0
    for head, committed_at in commits:
        while j < len(projected) and projected[j][0] < head:
            j += 1
        if j == len(projected):
            unprojected += 1
            continue
        lags.append(max(0.0, projected[j][1] - committed_at))
    return lags, unprojected


def latency_figures(ingest: dict[str, Any], project: dict[str, Any]) -> dict[str, Any]:
    """Frame -> commit latency and commit -> projected lag, per event, from what the writer's
    and the projector's probes saw (in one process, or in two role processes)."""
    latencies: list[float] = ingest["latencies"]
    lags = projection_lags(ingest["positions"], ingest["committed"], project["projected"])
    event_lags = [lag for lag in lags if lag is not None]
    end_to_end = [lat + lag for lat, lag in zip(latencies, lags, strict=True) if lag is not None]
    commit_lags, unprojected_commits = per_commit_lags(ingest["commits"], project["projected"])

    def pct(samples: Sequence[float], fraction: float) -> float | None:
        return percentile_ms(samples, fraction) if samples else None

    def most(samples: Sequence[float]) -> float | None:
        return round(max(samples) * 1000, 2) if samples else None

    return {
        "p50_commit_ms": pct(latencies, 0.50),
        "p99_commit_ms": pct(latencies, 0.99),
        "max_commit_ms": most(latencies),
        "p50_projection_lag_ms": pct(event_lags, 0.50),
        "p99_projection_lag_ms": pct(event_lags, 0.99),
        "max_projection_lag_ms": most(event_lags),
        "unprojected_events": len(lags) - len(event_lags),
        "p99_projection_lag_per_commit_ms": pct(commit_lags, 0.99),
        "unprojected_commits": unprojected_commits,
        "p50_frame_to_projection_ms": pct(end_to_end, 0.50),
        "p99_frame_to_projection_ms": pct(end_to_end, 0.99),
        **append_figures(ingest["appends"], ingest["before"]),
    }


def watch_attribute(obj: Any, name: str, on_set: Any) -> bool:
    """Record every assignment to a plain instance attribute, by swapping in a subclass whose
    data descriptor wins over the instance dict. False when that is not possible."""
    cls = type(obj)
    if isinstance(inspect.getattr_static(cls, name, None), property):
        return False
    if name not in getattr(obj, "__dict__", {}):
        return False

    def getter(self: Any) -> Any:
        return self.__dict__[name]

    def setter(self: Any, value: Any) -> None:
        self.__dict__[name] = value
        on_set(value)

    watched = type(f"Watched{cls.__name__}", (cls,), {name: property(getter, setter)})
    try:
        obj.__class__ = watched
    except TypeError:
        return False
    on_set(obj.__dict__[name])
    return True


def time_appends(writer: EventWriter, appends: list[tuple[float, int]]) -> bool:
    """Record (seconds, events) of every batch the writer appends (one transaction: lock,
    positions, COPY, cursors, NOTIFY, commit), by wrapping its appender's `append`. False if
    the writer has no such appender (then no split of the latency is reported)."""
    appender: Any = getattr(writer, "_appender", None)
    append = getattr(appender, "append", None)
    if append is None:
        return False

    async def timed(connection: Any, items: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return await append(connection, items, *args, **kwargs)
        finally:
            appends.append((time.monotonic() - started, len(items)))

    appender.append = timed
    return True


def append_figures(appends: Sequence[tuple[float, int]],
                   before: Sequence[float]) -> dict[str, Any]:
    """How long the writer's transactions took (per commit), and how long each event waited
    before its batch's transaction began (socket read or hand-over -> parse -> queue -> batch:
    the latency minus the commit's own duration)."""
    durations = [d for d, _ in appends]
    return {
        "p50_append_ms": percentile_ms(durations, 0.50) if durations else None,
        "p99_append_ms": percentile_ms(durations, 0.99) if durations else None,
        "max_append_ms": round(max(durations) * 1000, 2) if durations else None,
        "p50_before_commit_ms": percentile_ms(before, 0.50) if before else None,
        "p99_before_commit_ms": percentile_ms(before, 0.99) if before else None,
    }


def leader_connection(component: Any) -> Any:
    """The writer's or the projector's database connection (its LeaderConnection's), if open."""
    return getattr(getattr(component, "_leader", None), "connection", None)


def app_backends(app: App) -> dict[str, int | None]:
    """Server pids of the writer's and the projector's connections (None: not connected)."""
    backends: dict[str, int | None] = {}
    if app.writer is not None:
        backends["writer_backend"] = server_pid(leader_connection(app.writer))
    if app.projector is not None:
        backends["projector_backend"] = server_pid(leader_connection(app.projector))
    return backends


@dataclasses.dataclass
class DaemonRun:
    app: App
    task: asyncio.Task[int]
    probe: Probe
    code: int | None = None


def daemon_options(args: argparse.Namespace) -> dict[str, Any]:
    """The daemon's settings from the bench's arguments, picklable for a child process."""
    return {"queue_size": args.queue_size, "batch_size": args.batch_size,
            "batch_wait_ms": args.batch_wait_ms, "request_rate": args.request_rate,
            "request_burst": args.request_burst, "no_history": args.no_history}


@contextlib.asynccontextmanager
async def running_daemon(
    target: DatabaseTarget,
    ws_url: str,
    identities: Sequence[tuple[str, str]],
    args: argparse.Namespace,
    light: bool = False,
    roles: Sequence[str] = ROLES,
) -> AsyncIterator[DaemonRun]:
    """`recorder run` (or `recorder run --role R` for each of `roles`) with these consumer
    identities against the simulator at `ws_url`."""
    settings = dataclasses.replace(
        load_settings(environ={}),
        account=ACCOUNT,
        ums_url=ws_url,
        # Agent profiles (and the history) from the simulator, as LivePerson's CSDS names them.
        csds_url="http" + ws_url.removeprefix("ws"),
        agent_profiles=not getattr(args, "no_history", False),
        reconcile=not getattr(args, "no_history", False),
        consumers=tuple(
            ConsumerIdentity(name=f"bench-{n}", jwt=Secret(token))
            for n, (_, token) in enumerate(identities, 1)
        ),
        queue_size=args.queue_size,
        api_listen=f"127.0.0.1:{free_port()}",
        writer_batch_size=args.batch_size,
        writer_batch_wait_ms=args.batch_wait_ms,
    )
    async with build_app(settings, target, roles=roles,
                         client_settings=client_settings(args)) as app:
        tune_garbage_collector()  # as `recorder run` does
        probe = Probe(light)
        probe.attach(app)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop), name="daemon")
        run = DaemonRun(app, task, probe)
        try:
            yield run
        finally:
            stop.set()
            run.code = await task
            probe.detach()
            if run.code != 0:
                say(f"  WARNING: daemon ({'+'.join(app.roles)}) stopped with failed "
                    f"components: {app.supervisor.failed}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def client_settings(args: argparse.Namespace) -> ClientSettings:
    return ClientSettings(request_rate=args.request_rate, request_burst=args.request_burst)


def check_alive(run: DaemonRun) -> None:
    if run.task.done():
        failed = run.app.supervisor.failed
        raise CorrectnessError(f"the daemon stopped on its own (failed components: {failed})")


async def settle(
    run: DaemonRun, expected: set[tuple[str, int]], *, stall_s: float, quiet_s: float = 0.3,
    projection_wait_s: float = 30.0,
) -> bool:
    """Wait until every expected event is committed, the writer is idle and quiet, and the
    projector has caught up (False if it did not within projection_wait_s)."""
    writer, probe = run.app.writer, run.probe
    assert writer is not None
    last_head, last_change = writer.head, time.monotonic()
    complete = False
    while True:
        await asyncio.sleep(0.02)
        check_alive(run)
        now = time.monotonic()
        if writer.head != last_head:
            last_head, last_change = writer.head, now
        if not complete:
            complete = len(probe.keys) >= len(expected) and expected <= probe.keys
        if complete and writer.queue.empty() and now - last_change >= quiet_s:
            break
        if now - last_change > stall_s:
            missing = len(expected - probe.keys)
            raise CorrectnessError(f"no commit for {stall_s:.0f}s with {missing} of "
                                   f"{len(expected)} sequenced events still missing")
    deadline = time.monotonic() + projection_wait_s
    while probe.projected_position() < writer.head:
        if time.monotonic() > deadline:
            say(f"  projector at {probe.projected_position()}, head {writer.head}: "
                f"not caught up after {projection_wait_s:.0f}s")
            return False
        await asyncio.sleep(0.01)
    return True


# -- roles in processes of their own -------------------------------------------------------------


def role_process(
    pipe: Connection, role: str, dsn: str, embedded: bool, ws_url: str,
    identities: list[tuple[str, str]], options: dict[str, Any], profile: str | None,
    metrics_dir: str | None,
) -> None:
    """Entry point of a role child: `recorder run --role R`, probed, answering the bench."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"{role} %(levelname)s %(name)s: %(message)s")
    if metrics_dir is not None:
        use_multiprocess_dir(metrics_dir)  # as under `recorder run`: metrics in shared files
    target = DatabaseTarget(dsn=dsn, embedded=embedded)
    try:
        run_event_loop(_role_process(pipe, role, target, ws_url, identities,
                                     argparse.Namespace(**options), profile))
    except Exception as exc:
        with contextlib.suppress(Exception):
            pipe.send((False, f"{type(exc).__name__}: {exc}"))
        raise


async def _role_process(
    pipe: Connection, role: str, target: DatabaseTarget, ws_url: str,
    identities: list[tuple[str, str]], args: argparse.Namespace, profile: str | None,
) -> int:
    async with running_daemon(target, ws_url, identities, args, roles=(role,)) as run:
        child = RoleChild(run, profile)
        await child.wait_started()
        pipe.send((True, {"pid": os.getpid(), "backends": app_backends(run.app)}))
        await serve_commands(pipe, child.handlers())
    pipe.send((True, child.final()))
    return 0


class RoleChild:
    """The commands a role process answers (bench/roles.py serve_commands)."""

    def __init__(self, run: DaemonRun, profile: str | None) -> None:
        self.run = run
        self.profile = profile
        self.gc_pauses = GcPauses()
        self.profiler: cProfile.Profile | None = None
        self.expected: set[tuple[str, int]] | None = None
        self.complete = False
        self.cpu_started = 0.0
        self.loop_lag = LoopLag()
        self.lag_task: asyncio.Task[None] | None = None

    async def wait_started(self, timeout_s: float = 30.0) -> None:
        """The projector leads and LISTENs for commits (the writer connects on its first
        batch, the sockets are the simulator's to count)."""
        app, deadline = self.run.app, time.monotonic() + timeout_s
        while app.projector is not None and not (app.projector.is_leader
                                                 and app.wakeups.listening):
            check_alive(self.run)
            if time.monotonic() > deadline:
                raise CorrectnessError(f"the projector did not start within {timeout_s:.0f}s")
            await asyncio.sleep(0.01)

    def handlers(self) -> dict[str, Any]:
        return {"status": self.status, "expect": self.expect, "reset": self.reset,
                "collect": self.collect, "backends": self.backends,
                "wait_position": self.wait_position}

    def backends(self) -> dict[str, int | None]:
        return app_backends(self.run.app)

    def status(self, missing: bool = False) -> dict[str, Any]:
        run, probe = self.run, self.run.probe
        status: dict[str, Any] = {"alive": not run.task.done(),
                                  "failed": list(run.app.supervisor.failed),
                                  "stored": probe.stored,
                                  "projected": probe.projected_position()}
        writer = run.app.writer
        if writer is not None:
            status.update(head=writer.head, queue=writer.queue.qsize())
            if self.expected is not None and not self.complete:
                self.complete = (len(probe.keys) >= len(self.expected)
                                 and self.expected <= probe.keys)
            status["complete"] = self.complete
            if missing and self.expected is not None:
                status["missing"] = len(self.expected - probe.keys)
        return status

    def expect(self, keys: list[tuple[str, int]]) -> None:
        self.expected = set(map(tuple, keys))  # type: ignore[arg-type]
        self.complete = False

    def reset(self) -> None:
        """The measured window starts: samples cleared, GC pauses timed, the profiler on."""
        self.run.probe.reset()
        self.gc_pauses.__exit__()
        self.gc_pauses = GcPauses().__enter__()
        self.cpu_started = time.process_time()
        if self.lag_task is not None:
            self.lag_task.cancel()
        self.loop_lag = LoopLag()
        self.lag_task = asyncio.create_task(self.loop_lag.run())
        if self.profile:
            self.profiler = cProfile.Profile()
            self.profiler.enable()

    def collect(self) -> dict[str, Any]:
        """The window ends: what this role saw in it."""
        if self.profiler is not None and self.profile:
            self.profiler.disable()
            self.profiler.dump_stats(self.profile)
            self.profiler = None
        self.gc_pauses.__exit__()
        if self.lag_task is not None:
            self.lag_task.cancel()
            self.lag_task = None
        run, probe = self.run, self.run.probe
        data: dict[str, Any] = {"gc_pauses": self.gc_pauses.summary(),
                                "loop_lag": self.loop_lag.summary(),
                                "cpu_s": time.process_time() - self.cpu_started}
        if run.app.writer is not None:
            data["ingest"] = probe.ingest_data()
            data["frames"] = sum(c.connection.frames for c in run.app.clients if c.connection)
        if run.app.projector is not None:
            data["project"] = probe.project_data()
        return data

    async def wait_position(self, position: int, timeout_s: float) -> bool:
        """Until the projector's saved position reaches `position`; False after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while self.run.probe.projected_position() < position:
            check_alive(self.run)
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def final(self) -> dict[str, Any]:
        app = self.run.app
        return {"code": self.run.code, "failed": list(app.supervisor.failed),
                "head": app.writer.head if app.writer is not None else None,
                "position": app.projector.position if app.projector is not None else None}


@dataclasses.dataclass
class RoleRun:
    ingest: ChildProcess
    project: ChildProcess
    finals: dict[str, Any] = dataclasses.field(default_factory=dict)
    errors: list[str] = dataclasses.field(default_factory=list)

    async def backends(self) -> dict[str, int | None]:
        return {**await self.ingest.call("backends"), **await self.project.call("backends")}


@contextlib.asynccontextmanager
async def role_processes(
    target: DatabaseTarget, ws_url: str, identities: Sequence[tuple[str, str]],
    args: argparse.Namespace, profile: str | None = None,
) -> AsyncIterator[RoleRun]:
    """`project` and `ingest` each in a child process, started in `recorder run`'s order;
    stopped ingest first (its writer drains), then project (it catches up)."""
    metrics_dir = (tempfile.mkdtemp(prefix="recorder-bench-metrics-")
                   if args.metrics == "files" else None)

    def child(role: str, profile_path: str | None) -> ChildProcess:
        return ChildProcess(role, role_process, role, target.dsn, target.embedded, ws_url,
                            list(identities), daemon_options(args), profile_path, metrics_dir)

    run = RoleRun(child("ingest", profile), child("project",
                                                   f"{profile}.project" if profile else None))
    started: list[ChildProcess] = []
    try:
        for process in (run.project, run.ingest):
            started.append(process)
            await process.start()
        yield run
    finally:
        for process in reversed(started):
            try:
                run.finals[process.name] = await process.stop()
            except CorrectnessError as exc:
                run.errors.append(str(exc))
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def check_role(status: dict[str, Any], name: str) -> None:
    if not status["alive"]:
        raise CorrectnessError(f"the {name} role stopped on its own (failed components: "
                               f"{status['failed']})")


async def settle_roles(
    run: RoleRun, expected: list[tuple[str, int]], *, stall_s: float, quiet_s: float = 0.3,
    projection_wait_s: float = 30.0,
) -> tuple[bool, int]:
    """settle() across processes: the ingest role committed every expected event and is
    quiet, then the project role's position reached its head. (caught up?, head)"""
    await run.ingest.call("expect", expected)
    last_head, last_change = -1, time.monotonic()
    while True:
        await asyncio.sleep(0.02)
        status = await run.ingest.call("status")
        check_role(status, "ingest")
        now = time.monotonic()
        if status["head"] != last_head:
            last_head, last_change = status["head"], now
        if status["complete"] and status["queue"] == 0 and now - last_change >= quiet_s:
            break
        if now - last_change > stall_s:
            missing = (await run.ingest.call("status", True))["missing"]
            raise CorrectnessError(f"no commit for {stall_s:.0f}s with {missing} of "
                                   f"{len(expected)} sequenced events still missing")
    caught_up = await run.project.call("wait_position", last_head, projection_wait_s,
                                       timeout_s=projection_wait_s + 30)
    if not caught_up:
        status = await run.project.call("status")
        say(f"  projector at {status['projected']}, head {last_head}: not caught up after "
            f"{projection_wait_s:.0f}s")
    return bool(caught_up), last_head


async def verify(dsn: str, low: int, high: int, truth: dict[str, Any]) -> dict[str, Any]:
    """The whole log contiguous; this run's rows (low, high] hold the simulator's truth."""
    connection = await asyncpg.connect(dsn)
    try:
        count, first, last = await connection.fetchrow(
            "SELECT count(*), min(position), max(position) FROM events"
        )
        head = await connection.fetchval("SELECT position FROM log_head WHERE id = 1")
        sequenced = await connection.fetch(
            "SELECT dialog_id, sequence FROM events WHERE position > $1 AND position <= $2 "
            "AND kind = 'messaging' AND sequence IS NOT NULL", low, high,
        )
        states = await connection.fetch(
            "SELECT conversation_id, max((payload->'result'->'conversationDetails'"
            "->>'metaDataLastUpdateTs')::bigint) AS meta_ts FROM events "
            "WHERE position > $1 AND position <= $2 AND kind = 'conversation' "
            "GROUP BY conversation_id", low, high,
        )
        kinds = dict(await connection.fetch(
            "SELECT coalesce(change_type, kind), count(*) FROM events "
            "WHERE position > $1 AND position <= $2 GROUP BY 1", low, high,
        ))
    finally:
        await connection.close()
    # position is the primary key, so count = max - min + 1 means no hole and no repeat.
    if (count, first, last) != (head, 1 if head else None, head if head else None):
        raise CorrectnessError(
            f"log not contiguous 1..{head}: count={count} min={first} max={last}"
        )
    if head != high:
        raise CorrectnessError(f"log head {head} but the writer reported {high}")
    stored = [(row["dialog_id"], row["sequence"]) for row in sequenced]
    expected = set(map(tuple, truth["sequenced"]))
    stored_set = set(stored)
    duplicated = len(stored) - len(stored_set)
    missing = expected - stored_set
    extra = stored_set - expected
    if duplicated or missing or extra:
        raise CorrectnessError(
            f"(dialog, sequence) vs the simulator: {len(missing)} missing, "
            f"{duplicated} duplicated, {len(extra)} unknown (of {len(expected)})"
        )
    recorded = {row["conversation_id"]: row["meta_ts"] for row in states}
    conversations: dict[str, int] = truth["conversations"]
    absent = [c for c in conversations if c not in recorded]
    stale = [c for c, ts in conversations.items() if c in recorded and recorded[c] != ts]
    if absent or stale:
        raise CorrectnessError(
            f"conversations: {len(absent)} never recorded, {len(stale)} without their last "
            f"state (of {len(conversations)})"
        )
    return {"rows": high - low, "sequenced": len(stored), "conversations": len(recorded),
            "by_type": {str(k): v for k, v in sorted(kinds.items())}}


# -- phases --------------------------------------------------------------------------------------


async def phase_sim_alone(args: argparse.Namespace) -> dict[str, Any]:
    """The traffic generator with nobody connected: the model's own ceiling."""
    async with simulator("local", args.seed) as sim:
        consumers = await sim.call("new_consumers", args.consumers)
        subs = [sub for sub, _ in consumers]
        result = await sim.call("traffic", subs, args.conversations, 0.0, args.events)
    rate = result["steps"] / result["generate_s"]
    say(f"  {rate:,.0f} steps/s ({result['steps']:,} steps in {result['generate_s']:.2f}s), "
        "model only: no sockets, no frames rendered")
    return {"steps_per_s": round(rate, 1), "steps": result["steps"]}



@dataclasses.dataclass
class Measured:
    """One traffic run's window, from either layout."""

    traffic: dict[str, Any]
    truth: dict[str, Any]
    ingest: dict[str, Any]  # Probe.ingest_data()
    project: dict[str, Any]  # Probe.project_data()
    caught_up: bool
    cpu: dict[str, float | None]
    window_s: float
    backends: dict[str, float | None]
    gc_pauses: dict[str, Any]  # per process
    loop_lag: dict[str, Any]  # per process
    frames: int
    head_after: int
    #: role processes: their own CPU seconds over the window (time.process_time), as a check
    #: on the /proc readings of `cpu`
    reported_cpu: dict[str, float] = dataclasses.field(default_factory=dict)


async def run_traffic_phase(
    target: DatabaseTarget,
    args: argparse.Namespace,
    *,
    layout: str,
    where: str,
    seed: int,
    rate: float,
    steps: int,
    label: str,
    profile: str | None = None,
) -> dict[str, Any]:
    """One daemon against one simulator: connect, drive traffic, settle, verify. The daemon is
    one process (layout "inprocess", this one) or a process per role ("roles")."""
    sim_profile = f"{profile}.sim" if profile and where == "child" else None
    async with simulator(where, seed, sim_profile) as sim:
        consumers = await sim.call("new_consumers", args.consumers)
        head_before = await log_head(target.dsn)
        postmaster = await postmaster_pid(target.dsn)
        measure = measure_roles if layout == "roles" else measure_inprocess
        measured = await measure(target, args, sim, consumers, postmaster, where=where,
                                 rate=rate, steps=steps, label=label, profile=profile)
        head_after = measured.head_after
        checked = await verify(target.dsn, head_before, head_after, measured.truth)
    ingest, traffic = measured.ingest, measured.traffic
    if ingest["stored"] != head_after - head_before:
        raise CorrectnessError(f"listener saw {ingest['stored']} stored events, the log grew by "
                               f"{head_after - head_before}")
    elapsed = ingest["last_commit_wall"] - traffic["started_at"]
    rows = ingest["stored"]
    commits = len(ingest["commits"])
    cpu, window_s = measured.cpu, measured.window_s
    figures = latency_figures(ingest, measured.project)
    # The bench's processes and the server: everything this run made the machine do.
    run_cpu = sum(v or 0.0 for k, v in cpu.items() if k != "other_processes")
    simulator_cpu = cpu.get("simulator") or 0.0
    result: dict[str, Any] = {
        "layout": layout,
        "events_per_s": round(rows / elapsed, 1),
        "rows": rows,
        "steps": traffic["steps"],
        "rows_per_step": round(rows / traffic["steps"], 3),
        "frames": measured.frames,
        "events_per_frame": round(rows / max(1, measured.frames), 2),
        "elapsed_s": round(elapsed, 3),
        "offered_steps_per_s": rate or None,
        "simulator_generate_s": round(traffic["generate_s"], 3),
        "simulator_steps_per_s": round(traffic["steps"] / traffic["generate_s"], 1),
        "commits": commits,
        "mean_events_per_commit": round(rows / max(1, commits), 1),
        "duplicates_dropped": ingest["duplicates"],
        **figures,
        "projector_caught_up": measured.caught_up,
        "cpu_s": rounded(cpu),
        "cpu_window_s": round(window_s, 2),
        "cpu_share_of_window": {k: None if v is None else round(v / window_s, 2)
                                for k, v in cpu.items()},
        "cpu_us_per_event": per_event_us(cpu, rows),
        "simulator_cpu_share": round(simulator_cpu / run_cpu, 3) if run_cpu else None,
        "simulator_machine_share": round(
            simulator_cpu / (run_cpu + (cpu.get("other_processes") or 0.0)), 3
        ) if run_cpu else None,
        "postgres_backend_cpu_s": rounded(measured.backends),
        "postgres_backend_cpu_us_per_event": per_event_us(measured.backends, rows),
        "gc_pauses": measured.gc_pauses,
        "loop_lag": measured.loop_lag,
        "role_cpu_s_reported": rounded(measured.reported_cpu),
        "verified": checked,
        "positions": [head_before + 1, head_after],
        "simulator": where,
        "projection_method": measured.project.get("projection_method"),
    }
    say(f"  {result['events_per_s']:,.0f} events/s: {rows:,} rows from {traffic['steps']:,} "
        f"steps ({measured.frames:,} frames) in {elapsed:.2f}s; simulator generated at "
        f"{result['simulator_steps_per_s']:,.0f} steps/s")
    say(f"  frame -> commit p50 {result['p50_commit_ms']} ms, p99 {result['p99_commit_ms']} ms; "
        f"commit -> projected per event p50 {result['p50_projection_lag_ms']} ms, "
        f"p99 {result['p99_projection_lag_ms']} ms; frame -> projected p99 "
        f"{result['p99_frame_to_projection_ms']} ms ({commits:,} commits, "
        f"{result['mean_events_per_commit']} events each)")
    say(f"  of frame -> commit: before the batch's transaction p50 "
        f"{result['p50_before_commit_ms']} ms, p99 {result['p99_before_commit_ms']} ms; the "
        f"transaction itself p50 {result['p50_append_ms']} ms, p99 {result['p99_append_ms']} "
        f"ms per commit; event loop lag p99 " + ", ".join(
            f"{process} {lag['p99_ms']} ms" for process, lag in measured.loop_lag.items()))
    us = result["cpu_us_per_event"]
    split = result["postgres_backend_cpu_us_per_event"]
    say("  CPU per event (us): " + ", ".join(
        f"{k} {v}" for k, v in us.items() if k != "other_processes")
        + f" (writer backend {split.get('writer_backend')}, projector backend "
        f"{split.get('projector_backend')}); other processes {us['other_processes']}; "
        f"simulator {result['simulator_cpu_share']:.0%} of this run's CPU "
        f"(window {window_s:.1f}s x {os.cpu_count()} cores)")
    for process, pauses in measured.gc_pauses.items():
        if pauses["max_ms"] >= 20:
            say(f"  GC pauses in {process}: {pauses}")
    say(f"  verified: positions {head_before + 1}..{head_after} contiguous, "
        f"{checked['sequenced']:,} (dialog, sequence) = simulator truth, "
        f"{checked['conversations']:,} conversations at their last state")
    return result


async def measure_inprocess(
    target: DatabaseTarget, args: argparse.Namespace, sim: Any,
    consumers: list[tuple[str, str]], postmaster: int | None, *, where: str, rate: float,
    steps: int, label: str, profile: str | None,
) -> Measured:
    """Every role in this process, as `recorder demo` and the in-process tests run them."""
    subs = [sub for sub, _ in consumers]
    async with running_daemon(target, sim.ws_url, consumers, args) as run:
        ready = await sim.call("wait_ready", len(consumers), 30.0)
        if ready < len(consumers):
            raise CorrectnessError(f"only {ready} of {len(consumers)} identities connected")
        check_alive(run)
        await asyncio.sleep(0.2)
        run.probe.reset()
        profiler = cProfile.Profile() if profile else None
        pids: dict[str, int | None] = {"daemon": None}
        if where == "child":
            pids["simulator"] = sim.pid
        window = CpuWindow(pids, postmaster)
        backends = BackendCpu()
        backends.start(app_backends(run.app))
        window.start()
        if profiler is not None:
            profiler.enable()
        progress = asyncio.create_task(report_progress(run, label))
        loop_lag = LoopLag()
        lagging = asyncio.create_task(loop_lag.run())
        try:
            with GcPauses() as gc_pauses:
                traffic = await sim.call("traffic", subs, args.conversations, rate, steps)
                truth = await sim.call("truth", subs)
                expected = set(map(tuple, truth["sequenced"]))
                caught_up = await settle(run, expected, stall_s=args.stall_s)
        finally:
            progress.cancel()
            lagging.cancel()
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(str(profile))
        cpu, window_s = window.used()
        backend_cpu = backends.used(app_backends(run.app))
        frames = sum(c.connection.frames for c in run.app.clients if c.connection)
        ingest, project = run.probe.ingest_data(), run.probe.project_data()
    assert run.app.writer is not None
    return Measured(traffic, truth, ingest, project, caught_up, cpu, window_s, backend_cpu,
                    {"daemon": gc_pauses.summary()}, {"daemon": loop_lag.summary()}, frames,
                    head_after=run.app.writer.head)  # after it stopped and its writer drained


async def measure_roles(
    target: DatabaseTarget, args: argparse.Namespace, sim: Any,
    consumers: list[tuple[str, str]], postmaster: int | None, *, where: str, rate: float,
    steps: int, label: str, profile: str | None,
) -> Measured:
    """`ingest` and `project` each in a process of its own, as `recorder run` runs them."""
    subs = [sub for sub, _ in consumers]
    async with role_processes(target, sim.ws_url, consumers, args, profile) as run:
        ready = await sim.call("wait_ready", len(consumers), 30.0)
        if ready < len(consumers):
            raise CorrectnessError(f"only {ready} of {len(consumers)} identities connected")
        check_role(await run.ingest.call("status"), "ingest")
        await asyncio.sleep(0.2)
        await run.project.call("reset")
        await run.ingest.call("reset")
        pids: dict[str, int | None] = {"ingest": run.ingest.pid, "project": run.project.pid,
                                       "bench": None}
        if where == "child":
            pids["simulator"] = sim.pid
        window = CpuWindow(pids, postmaster)
        backends = BackendCpu()
        backends.start(await run.backends())
        window.start()
        stop_progress = asyncio.Event()
        progress = asyncio.create_task(report_role_progress(run, label, stop_progress))
        try:
            traffic = await sim.call("traffic", subs, args.conversations, rate, steps)
            truth = await sim.call("truth", subs)
            caught_up, _ = await settle_roles(run, truth["sequenced"], stall_s=args.stall_s)
        finally:
            stop_progress.set()
            await asyncio.gather(progress, return_exceptions=True)
        cpu, window_s = window.used()
        backend_cpu = backends.used(await run.backends())
        ingest = await run.ingest.call("collect")
        project = await run.project.call("collect")
    if run.errors:
        raise CorrectnessError("; ".join(run.errors))
    for name, final in run.finals.items():
        if final is not None and final["code"] != 0:
            say(f"  WARNING: the {name} role stopped with failed components: {final['failed']}")
    return Measured(traffic, truth, ingest["ingest"], project["project"], caught_up, cpu,
                    window_s, backend_cpu,
                    {"ingest": ingest["gc_pauses"], "project": project["gc_pauses"]},
                    {"ingest": ingest["loop_lag"], "project": project["loop_lag"]},
                    ingest["frames"], head_after=run.finals["ingest"]["head"],
                    reported_cpu={"ingest": ingest["cpu_s"], "project": project["cpu_s"]})


async def report_progress(run: DaemonRun, label: str) -> None:
    writer = run.app.writer
    assert writer is not None
    while True:
        await asyncio.sleep(5)
        say(f"  {label}: {run.probe.stored:,} stored in this run, log head "
            f"{writer.head:,}, projected to {run.probe.projected_position():,}, "
            f"queue {writer.queue.qsize():,}")


async def report_role_progress(run: RoleRun, label: str, stop: asyncio.Event) -> None:
    """As report_progress, asking the role processes; ends (between calls) when `stop` is set."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5)
            return
        ingest = await run.ingest.call("status")
        project = await run.project.call("status")
        say(f"  {label}: {ingest['stored']:,} stored in this run, log head "
            f"{ingest['head']:,}, projected to {project['projected']:,}, "
            f"queue {ingest['queue']:,}")


# -- the bare writer: the same rows at the same rate, no sockets and no projector ----------------


@contextlib.asynccontextmanager
async def bare_database(target: DatabaseTarget) -> AsyncIterator[DatabaseTarget]:
    """A second migrated database on the same server, for the bare writer: the bench's own
    log and projection stay as the daemon left them (no rows the projector would fold)."""
    connection = await asyncpg.connect(target.dsn)
    try:
        name = f"{await connection.fetchval('SELECT current_database()')}_bare"
    finally:
        await connection.close()
    await admin(target.dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
                f"CREATE DATABASE {name}")
    try:
        bare = DatabaseTarget(dsn=with_database(target.dsn, name), embedded=target.embedded)
        await migrate.upgrade(bare)
        yield bare
    finally:
        await admin(target.dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


BARE_COLUMNS = ("account_id", "consumer_id", "session_id", "kind", "type", "change_type",
                "conversation_id", "dialog_id", "sequence", "originator_id", "server_ts",
                "dedupe_key", "payload")


async def read_records(dsn: str, positions: Sequence[int], salt: str) -> list[EventRecord]:
    """The rows at these positions as the writer's records again. Dedupe keys are salted, so
    every run stores them all (the payloads, columns and key widths are unchanged)."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            f"SELECT {', '.join(BARE_COLUMNS)} FROM events "
            "WHERE position BETWEEN $1 AND $2 ORDER BY position", positions[0], positions[1],
        )
    finally:
        await connection.close()
    return [
        EventRecord(
            received_at=0.0, account_id=r["account_id"], consumer_id=r["consumer_id"],
            session_id=str(r["session_id"]),
            kind=r["kind"], type=r["type"], change_type=r["change_type"],
            conversation_id=r["conversation_id"], dialog_id=r["dialog_id"],
            sequence=r["sequence"], originator_id=r["originator_id"],
            server_ts=None if r["server_ts"] is None else r["server_ts"].timestamp(),
            dedupe_key=dedupe_digest("bench-bare", salt, bytes(r["dedupe_key"]).hex()),
            payload=r["payload"],
        )
        for r in rows
    ]


def bare_process(pipe: Connection, source_dsn: str, bare_dsn: str, embedded: bool,
                 positions: list[int], salt: str, options: dict[str, Any]) -> None:
    """Entry point of the bare writer's child process."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="bare %(levelname)s %(name)s: %(message)s")
    try:
        run_event_loop(_bare_process(pipe, source_dsn, DatabaseTarget(bare_dsn, embedded),
                                     positions, salt, argparse.Namespace(**options)))
    except Exception as exc:
        with contextlib.suppress(Exception):
            pipe.send((False, f"{type(exc).__name__}: {exc}"))
        raise


async def _bare_process(pipe: Connection, source_dsn: str, target: DatabaseTarget,
                        positions: list[int], salt: str, args: argparse.Namespace) -> int:
    records = await read_records(source_dsn, positions, salt)
    # The ingest role's writer, as recorder.app builds it (its NOTIFY included: nobody LISTENs).
    writer = EventWriter(target, queue_size=args.queue_size, batch_size=args.batch_size,
                         batch_wait_ms=args.batch_wait_ms)
    latencies: list[float] = []
    appends: list[tuple[float, int]] = []
    before: list[float] = []
    time_appends(writer, appends)
    done = asyncio.Event()

    def on_commit(result: AppendResult) -> None:
        # Measured as the daemon's probe does: one clock read per commit.
        now = time.time()
        started = now - (appends[-1][0] if appends else 0.0)
        for _, record in result.stored:
            latencies.append(now - record.received_at)
            before.append(started - record.received_at)
        if len(latencies) >= len(records):
            done.set()

    writer.add_listener(on_commit)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop), name="bare-writer")
    tune_garbage_collector()  # as `recorder run` does

    async def feed(rate: float) -> dict[str, Any]:
        """Open loop: row i is due at start + i / rate; received_at is stamped as it is
        handed to the writer (as the daemon stamps a frame as it comes off the socket)."""
        max_behind = 0.0
        with GcPauses() as gc_pauses:
            cpu = time.process_time()
            started = time.monotonic()
            for index, record in enumerate(records):
                ahead = started + index / rate - time.monotonic()
                if ahead > 0.0005:
                    await asyncio.sleep(ahead)
                else:
                    max_behind = max(max_behind, -ahead)
                record.received_at = time.time()
                await writer.put(record)
            fed_s = time.monotonic() - started
            waiter = asyncio.ensure_future(done.wait())
            await asyncio.wait({waiter, task}, timeout=60 + len(records) / rate,
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not done.is_set():
                raise CorrectnessError(f"the bare writer stored {len(latencies)} of "
                                       f"{len(records)} rows (stats {writer.stats})")
            elapsed = time.monotonic() - started
            cpu = time.process_time() - cpu
        return {"latencies": latencies, "appends": appends, "before": before,
                "elapsed_s": elapsed, "fed_s": fed_s,
                "max_behind_s": max_behind, "cpu_s": cpu, "gc_pauses": gc_pauses.summary(),
                "stats": dataclasses.asdict(writer.stats),
                "writer_backend": server_pid(leader_connection(writer))}

    pipe.send((True, {"pid": os.getpid(), "rows": len(records)}))
    try:
        await serve_commands(pipe, {"feed": feed})
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    pipe.send((True, None))
    return 0


async def phase_bare(
    target: DatabaseTarget, bare: DatabaseTarget, paced: dict[str, Any], args: argparse.Namespace,
    salt: str,
) -> dict[str, Any]:
    """The bare EventWriter in a process of its own, fed the rows the paced run stored, in
    their order, open loop at the paced run's rate, into `bare` on the same server."""
    rate = paced["target_events_per_s"]
    child = ChildProcess("bare writer", bare_process, target.dsn, bare.dsn, target.embedded,
                         list(paced["positions"]), salt, daemon_options(args))
    postmaster = await postmaster_pid(target.dsn)
    try:
        info = await child.start()
        window = CpuWindow({"bare_writer": child.pid, "bench": None}, postmaster)
        window.start()
        out = await child.call("feed", rate, timeout_s=120 + info["rows"] / rate)
        cpu, window_s = window.used()
        backend = pid_cpu_s(out["writer_backend"])  # it connected for the first batch
    finally:
        await child.stop()
    latencies, rows = out["latencies"], info["rows"]
    result = {
        "rows": rows,
        "rate_events_per_s": rate,
        "events_per_s": round(rows / out["fed_s"], 1),
        "max_behind_s": round(out["max_behind_s"], 3),
        "p50_commit_ms": percentile_ms(latencies, 0.50),
        "p99_commit_ms": percentile_ms(latencies, 0.99),
        "max_commit_ms": round(max(latencies) * 1000, 2),
        **append_figures(out["appends"], out["before"]),
        "batches": out["stats"]["batches"],
        "mean_events_per_commit": round(rows / max(1, out["stats"]["batches"]), 1),
        "cpu_s": rounded(cpu),
        "cpu_window_s": round(window_s, 2),
        "cpu_us_per_event": per_event_us({**cpu, "writer_backend": backend}, rows),
        "gc_pauses": out["gc_pauses"],
    }
    say(f"  {rows:,} rows at {rate:,.0f}/s: row handed over -> commit p50 "
        f"{result['p50_commit_ms']} ms, p99 {result['p99_commit_ms']} ms, max "
        f"{result['max_commit_ms']} ms ({result['batches']:,} commits, "
        f"{result['mean_events_per_commit']} events each; the transaction itself p50 "
        f"{result['p50_append_ms']} ms, p99 {result['p99_append_ms']} ms); CPU per event (us) "
        f"{result['cpu_us_per_event']}")
    return result


async def phase_copy(
    target: DatabaseTarget, positions: Sequence[int], chunk: int
) -> tuple[float, float]:
    """COPY the rows the full-speed run stored, as bench/append.py does: (seconds, this
    process's CPU seconds meanwhile)."""
    connection = await asyncpg.connect(target.dsn)
    try:
        rows = [
            tuple(row) for row in await connection.fetch(
                f"SELECT {', '.join(COPY_COLUMNS)} FROM events "
                "WHERE position BETWEEN $1 AND $2 ORDER BY position",
                positions[0], positions[1],
            )
        ]
    finally:
        await connection.close()
    cpu = process_cpu_s()
    elapsed = await run_copy(target.dsn, rows, chunk)
    return elapsed, process_cpu_s() - cpu


# -- memory: a fresh daemon (or ingest role) process ------------------------------------------


def memory_process(
    pipe: Connection, dsn: str, embedded: bool, ws_url: str,
    identities: list[tuple[str, str]], options: dict[str, Any],
) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="daemon %(levelname)s %(name)s: %(message)s")
    args = argparse.Namespace(**options)
    asyncio.run(_memory_daemon(pipe, DatabaseTarget(dsn=dsn, embedded=embedded), ws_url,
                               identities, args))


async def _memory_daemon(
    pipe: Connection, target: DatabaseTarget, ws_url: str,
    identities: list[tuple[str, str]], args: argparse.Namespace,
) -> None:
    loop = asyncio.get_running_loop()

    async def command() -> str:
        name: str = await loop.run_in_executor(None, pipe.recv)
        return name

    async def measured() -> int:
        gc.collect()
        await asyncio.sleep(0.3)
        gc.collect()
        return rss_kib()

    started = rss_kib()
    async with running_daemon(target, ws_url, identities, args, light=True,
                              roles=args.roles) as run:
        pipe.send({"rss_start_kib": started})
        await command()  # "connected": every socket is open and subscribed to conversations
        rss_before = await measured()
        run.probe.reset()
        pipe.send({"rss_before_kib": rss_before})
        await command()  # "subscribed": every dialog is subscribed
        writer = run.app.writer
        assert writer is not None
        last, quiet_since = writer.head, time.monotonic()
        while time.monotonic() - quiet_since < 0.5 or not writer.queue.empty():
            await asyncio.sleep(0.05)
            if writer.head != last:
                last, quiet_since = writer.head, time.monotonic()
        subscriber_dialogs = sum(
            len(getattr(client._handler, "dialogs", {})) for client in run.app.clients
        )
        pipe.send({"rss_after_kib": await measured(), "rows_stored": run.probe.stored,
                   "subscriber_dialogs": subscriber_dialogs})
        await command()  # "stop"
    pipe.send({"stopped": True})


async def phase_memory(target: DatabaseTarget, args: argparse.Namespace,
                       roles: Sequence[str] = ROLES) -> dict[str, Any]:
    """RSS of a fresh process running `roles`: the ingest role alone when the roles run in
    processes of their own (it holds the sockets and subscriptions), else every role."""
    per_consumer = max(1, args.dialogs // args.memory_consumers)
    async with simulator("child", args.seed + 40) as sim:
        consumers = await sim.call("new_consumers", args.memory_consumers)
        subs = [sub for sub, _ in consumers]
        context = multiprocessing.get_context("spawn")
        pipe, child_end = context.Pipe()
        options = {**daemon_options(args), "roles": list(roles)}
        process = context.Process(
            target=memory_process, name="memory-daemon",
            args=(child_end, target.dsn, target.embedded, sim.ws_url, consumers, options),
            daemon=True,
        )
        process.start()
        loop = asyncio.get_running_loop()

        async def receive() -> dict[str, Any]:
            ready = await loop.run_in_executor(None, pipe.poll, 120)
            if not ready:
                raise CorrectnessError("the memory daemon process did not answer")
            reply: dict[str, Any] = pipe.recv()
            return reply

        try:
            start = await receive()
            ready = await sim.call("wait_ready", len(consumers), 30.0)
            if ready < len(consumers):
                raise CorrectnessError(f"only {ready} of {len(consumers)} identities connected")
            pipe.send("connected")
            before = await receive()
            started = time.perf_counter()
            dialogs = await sim.call("make_dialogs", subs, per_consumer)
            deadline = time.monotonic() + 120
            subscribed = 0
            while subscribed < dialogs and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                subscribed = await sim.call("subscribed")
            subscribe_s = time.perf_counter() - started
            if subscribed < dialogs:
                raise CorrectnessError(f"only {subscribed} of {dialogs} dialogs subscribed")
            pipe.send("subscribed")
            after = await receive()
            pipe.send("stop")
            await receive()
        finally:
            await loop.run_in_executor(None, process.join, 30)
            if process.is_alive():
                process.kill()
    delta = after["rss_after_kib"] - before["rss_before_kib"]
    result = {
        "dialogs": subscribed,
        "consumers": len(consumers),
        "rss_start_mb": round(start["rss_start_kib"] / 1024, 1),
        "rss_before_mb": round(before["rss_before_kib"] / 1024, 1),
        "rss_mb": round(after["rss_after_kib"] / 1024, 1),
        "rss_delta_mb": round(delta / 1024, 1),
        "kib_per_dialog": round(delta / subscribed, 2),
        "rows_stored": after["rows_stored"],
        "subscriber_dialogs": after["subscriber_dialogs"],
        "subscribe_s": round(subscribe_s, 2),
        "roles": list(roles),
    }
    say(f"  RSS {result['rss_before_mb']} MB with {len(consumers)} sockets open -> "
        f"{result['rss_mb']} MB with {subscribed:,} dialogs subscribed "
        f"({result['kib_per_dialog']} KiB per dialog; {result['rows_stored']:,} rows stored; "
        f"all subscribed {subscribe_s:.1f}s after the conversations were made)")
    return result


# -- main ----------------------------------------------------------------------------------------


#: Seeds apart per layout, so the two layouts' simulators make different conversations.
LAYOUT_SEED_OFFSET = {"roles": 0, "inprocess": 100}


async def run_layout(
    target: DatabaseTarget, args: argparse.Namespace, layout: str, phases: set[str],
    bare: Callable[[], Awaitable[DatabaseTarget]], profile: str | None,
) -> dict[str, Any]:
    """The full-speed and paced runs of one layout, and the bare writer on the paced rows."""
    results: dict[str, Any] = {}
    seed = args.seed + LAYOUT_SEED_OFFSET[layout]
    where = "ingest and project each in a child process" if layout == "roles" \
        else "every role in this process"
    if "full" in phases:
        say(f"[{layout}] phase full: full speed, {where}, simulator in a child process, "
            f"{args.consumers} identities x {args.conversations} conversations, "
            f"{args.events:,} steps")
        results["full"] = await run_traffic_phase(
            target, args, layout=layout, where="child", seed=seed + 10, rate=0.0,
            steps=args.events, label=f"{layout} full", profile=profile,
        )

    if "full_inproc" in phases and layout == "inprocess":
        say(f"[{layout}] phase full_inproc: full speed, simulator on the daemon's event loop")
        results["full_inproc"] = await run_traffic_phase(
            target, args, layout=layout, where="local", seed=seed + 20, rate=0.0,
            steps=args.events, label=f"{layout} full_inproc",
        )

    headline = results.get("full") or results.get("full_inproc")
    if "paced" in phases:
        rate = args.paced_rate
        if headline is not None and headline["events_per_s"] < rate / 0.9:
            rate = round(0.9 * headline["events_per_s"], -2)
            say(f"  the full-speed run did not reach {args.paced_rate / 0.9:,.0f} events/s: "
                f"pacing at {rate:,.0f}")
        rows_per_step = headline["rows_per_step"] if headline else 1.0
        say(f"[{layout}] phase paced: open loop at {rate:,.0f} events/s "
            f"({rate / rows_per_step:,.0f} steps/s, {rows_per_step} rows per step) for "
            f"{args.paced_seconds:.0f}s, {where}, simulator in a child process")
        attempts: list[dict[str, Any]] = []
        for attempt, factor in enumerate((1.0, 0.6, 0.3)):
            offered = rate * factor
            if attempt:
                say(f"  not sustained (p50 {attempts[-1]['p50_commit_ms']} ms, "
                    f"{attempts[-1]['events_per_s']:,.0f} of "
                    f"{attempts[-1]['target_events_per_s']:,.0f} events/s committed): "
                    f"again at {offered:,.0f} events/s")
            step_rate = offered / rows_per_step
            paced = await run_traffic_phase(
                target, args, layout=layout, where="child", seed=seed + 30 + attempt,
                rate=step_rate, steps=int(step_rate * args.paced_seconds),
                label=f"{layout} paced {offered:,.0f}/s",
            )
            paced["target_events_per_s"] = offered
            # Sustained: the rate was kept and the median event did not wait in a queue.
            paced["sustained"] = (paced["events_per_s"] >= 0.9 * offered
                                  and paced["p50_commit_ms"] <= args.sustained_p50_ms)
            attempts.append(paced)
            if paced["sustained"]:
                break
        results["paced"] = attempts[0]
        results["paced_attempts"] = [
            {key: tried[key] for key in (
                "target_events_per_s", "events_per_s", "sustained", "p50_commit_ms",
                "p99_commit_ms", "max_commit_ms", "p99_before_commit_ms", "p99_append_ms",
                "p99_projection_lag_ms", "cpu_s",
                "cpu_us_per_event", "gc_pauses")}
            for tried in attempts
        ]
        if "bare" in phases:
            say(f"[{layout}] phase bare: the bare EventWriter in a child process (no sockets, "
                f"no projector), fed the {attempts[0]['rows']:,} rows of the paced run at "
                f"{attempts[0]['target_events_per_s']:,.0f} events/s, into a sibling database "
                "on the same server")
            results["bare"] = await phase_bare(target, await bare(), attempts[0], args,
                                               salt=layout)
    return results


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    phases = set(args.phases)
    layouts = list(LAYOUTS) if args.layout == "both" else [args.layout]
    results: dict[str, Any] = {"layouts": {}}
    async with bench_database() as (target, database), contextlib.AsyncExitStack() as stack:
        settings = await server_settings(target.dsn)
        say(f"server {settings}")
        bare_target: list[DatabaseTarget] = []

        async def bare() -> DatabaseTarget:
            if not bare_target:
                bare_target.append(await stack.enter_async_context(bare_database(target)))
            return bare_target[0]

        if "sim" in phases:
            say(f"phase sim: traffic generator alone, {args.consumers} consumers x "
                f"{args.conversations} conversations, {args.events:,} steps")
            results["sim"] = await phase_sim_alone(args)

        for layout in layouts:
            profile = args.profile if layout == layouts[0] or not args.profile \
                else f"{args.profile}.{layout}"
            results["layouts"][layout] = await run_layout(target, args, layout, phases, bare,
                                                          profile)

        first = results["layouts"][layouts[0]]
        headline = first.get("full") or first.get("full_inproc")
        if "copy" in phases and headline is not None:
            say(f"phase copy: COPY the {headline['rows']:,} rows of the [{layouts[0]}] "
                f"full-speed run into bench_copy (LIKE events INCLUDING ALL), "
                f"{args.copy_chunk:,} rows per transaction, synchronous_commit on")
            postmaster = await postmaster_pid(target.dsn)
            pg_cpu = postgres_cpu_s(postmaster)
            copy_s, client_cpu_s = await phase_copy(
                target, headline["positions"], args.copy_chunk
            )
            pg_cpu = postgres_cpu_s(postmaster) - pg_cpu
            results["copy"] = {
                "copy_events_per_s": round(headline["rows"] / copy_s, 1),
                "copy_elapsed_s": round(copy_s, 3),
                "cpu_us_per_event": {
                    "client": round(client_cpu_s / headline["rows"] * 1e6, 1),
                    "postgres": round(pg_cpu / headline["rows"] * 1e6, 1),
                },
            }
            say(f"  {results['copy']['copy_events_per_s']:,.0f} events/s ({copy_s:.2f}s)")

        if "memory" in phases:
            roles = ("ingest",) if layouts[0] == "roles" else ROLES
            say(f"phase memory: a fresh {'+'.join(roles)} process subscribing "
                f"~{args.dialogs:,} dialogs over {args.memory_consumers} identities "
                "(simulator in a child process)")
            results["memory"] = await phase_memory(target, args, roles)

    return summarize(args, layouts, results, database, settings, time.perf_counter() - started)


def within(value: float | None, limit: float, at_least: bool) -> bool | None:
    if value is None:
        return None
    return value >= limit if at_least else value <= limit


def ratio_of(value: float | None, reference: float | None, digits: int = 3) -> float | None:
    return round(value / reference, digits) if value is not None and reference else None


def layout_summary(
    layout: str, results: dict[str, Any], copy_per_s: float | None,
    memory: dict[str, Any],
) -> dict[str, Any]:
    """One layout's figures against the budgets (issue 14), references from the same run."""
    full = results.get("full") or results.get("full_inproc") or {}
    paced = results.get("paced") or {}
    bare = results.get("bare") or {}
    sustained = [a for a in results.get("paced_attempts", []) if a["sustained"]]
    lower = sustained[0] if sustained else {}
    events_per_s = full.get("events_per_s")
    ratio = ratio_of(events_per_s, copy_per_s)
    bare_p99 = bare.get("p99_commit_ms")
    p99_commit_ratio = ratio_of(paced.get("p99_commit_ms"), bare_p99, 2)
    lag_ratio = ratio_of(paced.get("p99_projection_lag_ms"), bare_p99, 2)
    budget_ok = {
        "ratio": within(ratio, BUDGET["ratio_min"], True),
        "p99_commit_ratio": within(p99_commit_ratio, BUDGET["p99_commit_ratio_max"], False),
        "p99_projection_lag_ms": within(
            paced.get("p99_projection_lag_ms"), BUDGET["p99_projection_lag_ms_max"], False
        ),
        "p99_projection_lag_ratio": within(lag_ratio, BUDGET["p99_projection_lag_ratio_max"],
                                           False),
        "kib_per_dialog": within(
            memory.get("kib_per_dialog"), BUDGET["kib_per_dialog_max"], False
        ),
    }
    absolute_ok = {
        "events_per_s": within(events_per_s, ABSOLUTE_BUDGET["events_per_s_min"], True),
        "p99_commit_ms": within(paced.get("p99_commit_ms"),
                                ABSOLUTE_BUDGET["p99_commit_ms_max"], False),
    }
    return {
        "layout": layout,
        "events_per_s": events_per_s,
        "ratio": ratio,
        "paced_target_events_per_s": paced.get("target_events_per_s"),
        "paced_events_per_s": paced.get("events_per_s"),
        "paced_sustained": paced.get("sustained"),
        "p50_commit_ms": paced.get("p50_commit_ms"),
        "p99_commit_ms": paced.get("p99_commit_ms"),
        "bare_p50_commit_ms": bare.get("p50_commit_ms"),
        "bare_p99_commit_ms": bare_p99,
        "p99_commit_ratio": p99_commit_ratio,
        "p99_before_commit_ms": paced.get("p99_before_commit_ms"),
        "p99_append_ms": paced.get("p99_append_ms"),
        "bare_p99_before_commit_ms": bare.get("p99_before_commit_ms"),
        "bare_p99_append_ms": bare.get("p99_append_ms"),
        "p50_projection_lag_ms": paced.get("p50_projection_lag_ms"),
        "p99_projection_lag_ms": paced.get("p99_projection_lag_ms"),
        "p99_projection_lag_ratio": lag_ratio,
        "p99_frame_to_projection_ms": paced.get("p99_frame_to_projection_ms"),
        "simulator_cpu_share": full.get("simulator_cpu_share"),
        "paced_simulator_cpu_share": paced.get("simulator_cpu_share"),
        "cpu_us_per_event": full.get("cpu_us_per_event"),
        "postgres_backend_cpu_us_per_event": full.get("postgres_backend_cpu_us_per_event"),
        "paced_cpu_us_per_event": paced.get("cpu_us_per_event"),
        "paced_postgres_backend_cpu_us_per_event":
            paced.get("postgres_backend_cpu_us_per_event"),
        "paced_loop_lag": paced.get("loop_lag"),
        "bare_cpu_us_per_event": bare.get("cpu_us_per_event"),
        "sustained_rate_events_per_s": lower.get("target_events_per_s"),
        "sustained_rate_p50_commit_ms": lower.get("p50_commit_ms"),
        "sustained_rate_p99_commit_ms": lower.get("p99_commit_ms"),
        "sustained_rate_p99_projection_lag_ms": lower.get("p99_projection_lag_ms"),
        "full_speed_p99_commit_ms": full.get("p99_commit_ms"),
        "full_speed_p99_projection_lag_ms": full.get("p99_projection_lag_ms"),
        "gc_pauses": full.get("gc_pauses"),
        "within_budget": budget_ok,
        "within_absolute_budget": absolute_ok,
    }


def summarize(
    args: argparse.Namespace, layouts: list[str], results: dict[str, Any], database: str,
    server: dict[str, str], total_s: float,
) -> dict[str, Any]:
    copy = results.get("copy") or {}
    memory = results.get("memory") or {}
    copy_per_s = copy.get("copy_events_per_s")
    summaries = {layout: layout_summary(layout, results["layouts"][layout], copy_per_s, memory)
                 for layout in layouts}
    for layout, s in summaries.items():
        say(f"[{layout}] ratio {s['ratio']} ({s['events_per_s']} events/s / COPY "
            f"{copy_per_s}); at {s['paced_target_events_per_s']} events/s: commit p99 "
            f"{s['p99_commit_ms']} ms vs bare writer {s['bare_p99_commit_ms']} ms "
            f"(x{s['p99_commit_ratio']}), projection lag p99 {s['p99_projection_lag_ms']} ms "
            f"(x{s['p99_projection_lag_ratio']} bare); simulator {s['simulator_cpu_share']} of "
            f"the run's CPU; CPU us/event {s['cpu_us_per_event']}; within budget: "
            f"{s['within_budget']}")
    primary = summaries[layouts[0]]
    inprocess = results["layouts"].get("inprocess") or {}
    say(f"total {total_s:.1f}s")
    return {
        **primary,
        "copy_events_per_s": copy_per_s,
        "inproc_events_per_s": (inprocess.get("full_inproc") or {}).get("events_per_s"),
        "sim_alone_steps_per_s": (results.get("sim") or {}).get("steps_per_s"),
        "rss_mb": memory.get("rss_mb"),
        "dialogs": memory.get("dialogs"),
        "kib_per_dialog": memory.get("kib_per_dialog"),
        "memory_roles": memory.get("roles"),
        "layouts": summaries,
        "budget": BUDGET,
        "absolute_budget": ABSOLUTE_BUDGET,
        "phases": results,
        "settings": {
            "layout": args.layout, "metrics": args.metrics,
            "events": args.events, "consumers": args.consumers,
            "conversations_per_consumer": args.conversations, "seed": args.seed,
            "paced_rate": args.paced_rate, "paced_seconds": args.paced_seconds,
            "sustained_p50_ms": args.sustained_p50_ms,
            "queue_size": args.queue_size, "batch_size": args.batch_size,
            "batch_wait_ms": args.batch_wait_ms, "request_rate": args.request_rate,
            "request_burst": args.request_burst, "copy_chunk": args.copy_chunk,
            "dialogs": args.dialogs, "memory_consumers": args.memory_consumers,
            "phases": list(args.phases), "cpus": os.cpu_count(),
        },
        "database": database,
        "server": server,
        "total_s": round(total_s, 1),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = load_settings(environ={})
    client = ClientSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000,
                        help="traffic steps (model actions) in the full-speed runs [100000]")
    parser.add_argument("--consumers", type=int, default=100,
                        help="consumer identities (one socket each) [100]")
    parser.add_argument("--conversations", type=int, default=40,
                        help="conversations per consumer [40]")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--paced-rate", type=float, default=5_000.0,
                        help="events/s offered in the open-loop latency phase [5000]")
    parser.add_argument("--paced-seconds", type=float, default=10.0)
    parser.add_argument("--sustained-p50-ms", type=float, default=50.0,
                        help="a paced rate counts as sustained when it is kept and the median "
                             "frame -> commit latency stays below this; otherwise the paced "
                             "phase retries at 60%% and 30%% of the rate [50]")
    parser.add_argument("--queue-size", type=int, default=defaults.queue_size)
    parser.add_argument("--batch-size", type=int, default=defaults.writer_batch_size)
    parser.add_argument("--batch-wait-ms", type=float, default=defaults.writer_batch_wait_ms)
    parser.add_argument("--request-rate", type=float, default=client.request_rate,
                        help="client requests/s per identity (subscriptions are paced)")
    parser.add_argument("--request-burst", type=int, default=client.request_burst)
    parser.add_argument("--copy-chunk", type=int, default=5_000)
    parser.add_argument("--dialogs", type=int, default=5_000,
                        help="dialog subscriptions opened in the memory phase [5000]")
    parser.add_argument("--memory-consumers", type=int, default=100)
    parser.add_argument("--stall-s", type=float, default=30.0,
                        help="fail if nothing is committed for this long while events miss")
    parser.add_argument("--phases", type=lambda s: [p for p in s.split(",") if p],
                        default=list(PHASES), help=f"comma-separated subset of {PHASES}")
    parser.add_argument("--no-history", action="store_true",
                        help="agent profiles and reconciliation off (the daemon before issue "
                             "16): their cost on the ingest path, same run")
    parser.add_argument("--layout", choices=(*LAYOUTS, "both"), default="roles",
                        help="roles: ingest and project each in a child process, as `recorder "
                             "run` runs them; inprocess: every role in this process (as "
                             "before); both: roles, then inprocess, in one run [roles]")
    parser.add_argument("--metrics", choices=("files", "memory"), default="files",
                        help="roles layout: metrics in prometheus_client's multiprocess files, "
                             "as under `recorder run` (files), or in process memory, as when "
                             "one process runs every role (memory) [files]")
    parser.add_argument("--profile", metavar="PATH",
                        help="cProfile the full-speed run: the ingest process (the daemon, "
                             "inprocess) to PATH, the project process to PATH.project, the "
                             "simulator child to PATH.sim; with --layout both, the second "
                             "layout's to PATH.inprocess(.sim) (pstats files)")
    args = parser.parse_args(argv)
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {PHASES}")
    if args.events <= 0 or args.consumers <= 0 or args.conversations <= 0:
        parser.error("--events, --consumers and --conversations must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # uvloop, as the CLI runs the daemon
    return report(lambda: run_event_loop(bench(args)))  # type: ignore[arg-type,return-value]


if __name__ == "__main__":
    sys.exit(main())
