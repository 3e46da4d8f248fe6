"""Read API latency under ingest: GET /conversations/{id} and /conversations/{id}/messages.

    python bench/api.py [--events N] [--conversations C] [--rate R] [--seconds S]
                        [--concurrency K] [--layout roles|inprocess|both] [--api-workers W]

1. Load: N events over C conversations (bench/append.py's seeded workload: UPSERTs, text and
   rich content messages, accept/read receipts) are COPYed into `events` with contiguous
   positions 1..N, and log_head is set to N. Generation (Python) overlaps the COPY (server).
2. Project: `recorder.projection.rebuild.rebuild(target, swap=True)` replays 0..N into scratch
   tables
   with the projector's fold and swaps them into the live tables (--project rebuild, the
   default; the empty live tables' position is set to N first, so the rebuild swaps instead
   of also folding the log inline), or a Projector catches up from 0 (--project projector,
   ~4k events/s here: too slow for 1M in the time budget). Either way conversations, dialogs,
   participants, messages and receipts are populated by the projection code.
3. Serve and ingest, with the roles in processes of their own as `recorder run` runs them
   (--layout roles, the default; multiprocessing, spawn):
   - ingest: an EventWriter, as recorder.app builds it (its metrics in shared files, as
     under `recorder run`), fed open loop at --rate events/s with new events of the same
     workload (built in that process before the clock starts; the workload's state is
     handed over). The sockets and parsing of the ingest role are not in this bench
     (bench/ingest.py measures them): what it adds here is the writer's commits and NOTIFYs.
   - project: `build_app(settings, target, roles=["project"])`: the projector, woken by the
     writer's NOTIFY through LISTEN.
   - serve: `build_app(settings, target, roles=["serve"])` in --api-workers processes on one
     port (SO_REUSEPORT when more than one), as `recorder run` starts them.
   Or (--layout inprocess, the bench as it was before the roles had processes) all in this
   process: the writer, a running Projector (batch 1000, woken by the writer's commits) and
   the API (`create_app(pool, token=...)`, pool max_size --pool-size) served by aiohttp on
   127.0.0.1. --layout both runs inprocess, then roles, over the same loaded log.
4. Measure, from a separate process (multiprocessing, spawn), with --concurrency closed-loop
   workers over random existing conversation ids, --seconds each, one after the other while
   the ingest runs: GET /conversations/{id}, GET /conversations/{id}/messages, and the bare
   asyncpg query the first route starts with (recorder.api.sql.GET_CONVERSATION) through an
   asyncpg pool of --concurrency connections: the reference, in the same run, under the same
   ingest. Latency is per request, client side (the client's own CPU time is in it; the
   client process's CPU is reported), as is the CPU of every process per window.

Budget (issue 14): p99_ratio = GET /conversations/{id} p99 / the bare query's p99 <= 2. The
earlier absolute budget (p99 <= 5 ms) is reported apart (`within_absolute_budget`).

Database rule as bench/append.py: with RECORDER_DATABASE_URL set, a scratch database
`recorder_bench_<pid>` on that server (created, migrated, dropped); otherwise the embedded
server in a temporary state directory.

Human-readable progress goes to stderr; the last line on stdout is one JSON object.
Timings are reported, never asserted: only a correctness failure (a non-200 answer for an
existing id, a wrong body, lost events) exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import random
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp import web

# bench/ is not a package: reuse append.py's workload, database rule and helpers.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from append import (
    COPY_COLUMNS,
    CorrectnessError,
    Workload,
    bench_database,
    copy_rows,
    percentile_ms,
    report,
    say,
    server_settings,
)
from roles import (
    BackendCpu,
    ChildProcess,
    CpuWindow,
    LoopLag,
    log_head,
    machine_busy_cpu_s,
    per_event_us,
    postmaster_pid,
    process_cpu_s,
    rounded,
    serve_commands,
    server_pid,
)

from recorder.api import create_app, make_runner
from recorder.api import sql as api_sql
from recorder.app import build_app
from recorder.cli import run_event_loop
from recorder.config import Secret, load_settings
from recorder.daemon import tune_garbage_collector
from recorder.db.target import DatabaseTarget
from recorder.eventlog.records import EventRecord
from recorder.eventlog.writer import AppendResult, EventWriter
from recorder.metrics import Metrics, use_multiprocess_dir
from recorder.projection import PROJECTION_NAME
from recorder.projection import sql as projection_sql
from recorder.projection.projector import Projector
from recorder.projection.rebuild import rebuild

#: Issue 14: GET /conversations/{id} p99 over the bare query's p99, both in the same run.
BUDGET = {"p99_ratio_max": 2.0}
#: The earlier absolute budget, reported apart (noisy on a shared machine).
ABSOLUTE_BUDGET = {"p99_ms_max": 5.0}
LAYOUTS = ("roles", "inprocess")


# -- phase 1: load the log by COPY ---------------------------------------------------------------


async def generate(workload: Workload, count: int, slice_size: int = 2_000) -> list[EventRecord]:
    """workload.events(count), yielding to the loop now and then so a COPY keeps flowing."""
    records: list[EventRecord] = []
    now = time.time()
    while len(records) < count:
        part = workload.events(min(slice_size, count - len(records)))
        for r in part:
            r.received_at = now
        records.extend(part)
        await asyncio.sleep(0)
    return records


async def load_log(dsn: str, workload: Workload, total: int, chunk: int, head: int = 0) -> float:
    """COPY the workload into `events` at positions head + 1 .. total; log_head = total."""
    connection = await asyncpg.connect(dsn)
    started = time.perf_counter()
    copying: asyncio.Task[Any] | None = None
    try:
        done = head
        next_report = started + 10
        while done < total:
            records = await generate(workload, min(chunk, total - done))
            rows = copy_rows(records, done + 1)
            del records
            if copying is not None:
                await copying
            copying = asyncio.ensure_future(connection.copy_records_to_table(
                "events", records=rows, columns=COPY_COLUMNS))
            done += len(rows)
            if time.perf_counter() >= next_report:
                next_report += 10
                say(f"  loaded {done:,}/{total:,} events "
                    f"({(done - head) / (time.perf_counter() - started):,.0f}/s)")
        if copying is not None:
            await copying
        await connection.execute("UPDATE log_head SET position = $1 WHERE id = 1", total)
        count, low, high = await connection.fetchrow(
            "SELECT count(*), min(position), max(position) FROM events")
        if (count, low, high) != (total, 1, total):
            raise CorrectnessError(f"log not contiguous 1..{total}: {count=} {low=} {high=}")
        await connection.execute("ANALYZE events")
    finally:
        if copying is not None and not copying.done():
            copying.cancel()
        await connection.close()
    return time.perf_counter() - started


# -- phase 2: project it -------------------------------------------------------------------------


async def rebuild_log(target: DatabaseTarget, head: int, batch_size: int) -> float:
    """recorder.rebuild with swap. The live tables are empty, so their saved position is set to
    the head first: the rebuild then replays, compares (every row differs) and swaps the
    rebuilt tables in, instead of also folding the whole log into the live tables inline."""
    connection = await asyncpg.connect(target.dsn)
    try:
        if any((await table_counts(target.dsn, tables=PROJECTION_TABLE_NAMES)).values()):
            raise CorrectnessError("the live projection tables are not empty")
        await connection.execute(projection_sql.ENSURE_POSITION, PROJECTION_NAME)
        await connection.execute(
            "UPDATE projection_positions SET position = $2 WHERE name = $1",
            PROJECTION_NAME, head)
    finally:
        await connection.close()
    started = time.perf_counter()
    next_report = [started + 10]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() >= next_report[0]:
            next_report[0] += 10
            say(f"  rebuilt {done:,}/{total:,} "
                f"({done / (time.perf_counter() - started):,.0f} events/s)")

    report = await rebuild(target, progress=progress, batch_size=batch_size, swap=True)
    elapsed = time.perf_counter() - started
    say(f"  replay {report.seconds:.1f}s ({report.events_per_s:,.0f} events/s), compare "
        f"{report.compare_seconds:.1f}s, swapped {report.swapped} at {report.position:,}")
    if report.position != head or not report.swapped:
        raise CorrectnessError(f"rebuild did not swap in position {head}: {report.as_text()}")
    connection = await asyncpg.connect(target.dsn)
    try:
        await connection.execute("ANALYZE")
    finally:
        await connection.close()
    return elapsed


async def project_log(target: DatabaseTarget, head: int, batch_size: int) -> float:
    projector = Projector(target, batch_size=batch_size)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(projector.run(stop))
    try:
        while projector.position < head:
            await asyncio.wait({task}, timeout=10)
            if task.done():
                raise CorrectnessError(f"projector stopped at {projector.position}: "
                                       f"{task.exception()!r}")
            say(f"  projected {projector.position:,}/{head:,} "
                f"({projector.position / (time.perf_counter() - started):,.0f} events/s)")
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    elapsed = time.perf_counter() - started
    connection = await asyncpg.connect(target.dsn)
    try:
        await connection.execute("ANALYZE")
    finally:
        await connection.close()
    return elapsed


PROJECTION_TABLE_NAMES = ("conversations", "dialogs", "participants", "messages", "receipts")


async def table_counts(dsn: str, tables: Sequence[str] = ("events", *PROJECTION_TABLE_NAMES),
                       ) -> dict[str, int]:
    connection = await asyncpg.connect(dsn)
    try:
        return {
            table: int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
            for table in tables
        }
    finally:
        await connection.close()


# -- phase 4: the client process -----------------------------------------------------------------


def client_process(pipe: Connection, url: str, dsn: str, token: str, ids: list[str],
                   concurrency: int, seconds: float, seed: int) -> None:
    try:
        result = asyncio.run(_client(pipe, url, dsn, token, ids, concurrency, seconds, seed))
    except BaseException as exc:  # reported to the parent, which decides
        pipe.send({"error": repr(exc)})
    else:
        pipe.send(result)
    finally:
        pipe.close()


async def _client(pipe: Connection, url: str, dsn: str, token: str, ids: list[str],
                  concurrency: int, seconds: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    results: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        for name, path in (("conversation", "/conversations/{}"),
                           ("messages", "/conversations/{}/messages")):
            # Warm-up: the connections open, the pool fills, plans are cached.
            for cid in rng.sample(ids, min(len(ids), 2 * concurrency)):
                async with session.get(url + path.format(cid)) as response:
                    await response.read()
            pipe.send(("start", name))
            pipe.recv()  # the parent notes the ingest position at the start

            async def http_worker(
                path: str = path, name: str = name
            ) -> tuple[list[float], list[str]]:
                latencies: list[float] = []
                failures: list[str] = []
                deadline = time.perf_counter() + seconds
                while True:
                    cid = rng.choice(ids)
                    started = time.perf_counter()
                    if started >= deadline:
                        break
                    async with session.get(url + path.format(cid)) as response:
                        body = await response.read()
                        status = response.status
                    latencies.append(time.perf_counter() - started)
                    if status != 200:
                        failures.append(f"{path.format(cid)}: HTTP {status} {body[:200]!r}")
                        continue
                    document = orjson.loads(body)
                    if name == "conversation" and document.get("conversation_id") != cid:
                        failures.append(f"{path.format(cid)}: body for "
                                        f"{document.get('conversation_id')!r}")
                    elif name == "messages" and not document.get("items"):
                        failures.append(f"{path.format(cid)}: no messages")
                return latencies, failures

            cpu0, wall0 = time.process_time(), time.perf_counter()
            done = await asyncio.gather(*(http_worker() for _ in range(concurrency)))
            results[name] = _summary(done, time.perf_counter() - wall0,
                                     time.process_time() - cpu0)
            pipe.send(("stop", name))
            pipe.recv()

    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    try:
        for cid in rng.sample(ids, min(len(ids), 2 * concurrency)):
            await pool.fetchrow(api_sql.GET_CONVERSATION, cid)
        pipe.send(("start", "db"))
        pipe.recv()

        async def db_worker() -> tuple[list[float], list[str]]:
            latencies: list[float] = []
            failures: list[str] = []
            deadline = time.perf_counter() + seconds
            while True:
                cid = rng.choice(ids)
                started = time.perf_counter()
                if started >= deadline:
                    break
                row = await pool.fetchrow(api_sql.GET_CONVERSATION, cid)
                latencies.append(time.perf_counter() - started)
                if row is None or row["conversation_id"] != cid:
                    failures.append(f"bare query for {cid}: {row!r}")
            return latencies, failures

        cpu0, wall0 = time.process_time(), time.perf_counter()
        done = await asyncio.gather(*(db_worker() for _ in range(concurrency)))
        results["db"] = _summary(done, time.perf_counter() - wall0, time.process_time() - cpu0)
        pipe.send(("stop", "db"))
        pipe.recv()
    finally:
        await pool.close()
    return results


def _summary(done: list[tuple[list[float], list[str]]], wall: float, cpu: float,
             ) -> dict[str, Any]:
    latencies = [x for lat, _ in done for x in lat]
    failures = [f for _, fail in done for f in fail]
    return {
        "requests": len(latencies),
        "p50_ms": percentile_ms(latencies, 0.50) if latencies else None,
        "p90_ms": percentile_ms(latencies, 0.90) if latencies else None,
        "p99_ms": percentile_ms(latencies, 0.99) if latencies else None,
        "max_ms": round(max(latencies) * 1000, 2) if latencies else None,
        "rps": round(len(latencies) / wall, 1),
        "seconds": round(wall, 2),
        "client_cpu_s": round(cpu, 2),
        "failures": len(failures),
        "failure_examples": failures[:5],
    }


# -- phase 3: serve and ingest -------------------------------------------------------------------


class Ingest:
    """Open loop: event i is due at start + i / rate, whatever the writer is doing."""

    def __init__(self, writer: EventWriter, records: list[EventRecord], rate: float) -> None:
        self.writer, self.records, self.rate = writer, records, rate
        self.offered = 0
        self.max_behind_s = 0.0
        self.started = 0.0

    async def run(self) -> None:
        self.started = time.monotonic()
        wall = time.time()
        for index, record in enumerate(self.records):
            due = index / self.rate
            ahead = self.started + due - time.monotonic()
            if ahead > 0.001:
                await asyncio.sleep(ahead)
            else:
                self.max_behind_s = max(self.max_behind_s, -ahead)
            record.received_at = wall + due
            await self.writer.put(record)
            self.offered = index + 1
        say(f"  ingest ran out of pre-built events ({len(self.records):,}); raise --spare-s")


async def measure_inprocess(target: DatabaseTarget, workload: Workload,
                            args: argparse.Namespace, ids: list[str], head: int,
                            ) -> dict[str, Any]:
    phases = 3
    budget_s = phases * (args.seconds + 3) + args.spare_s
    started = time.perf_counter()
    records = workload.events(int(args.rate * budget_s))
    say(f"built {len(records):,} ingest events in {time.perf_counter() - started:.1f}s "
        f"({budget_s:.0f}s at {args.rate:,.0f}/s)")

    token = secrets.token_urlsafe(24)
    pool = await asyncpg.create_pool(target.dsn, min_size=1, max_size=args.pool_size)
    writer = EventWriter(target)
    projector = Projector(target, batch_size=1000)
    writer.add_listener(lambda _: projector.wake())
    commits: list[tuple[float, int]] = []  # (time, head) per commit

    def on_commit(result: AppendResult) -> None:
        if result.stored:
            commits.append((time.monotonic(), result.stored[-1][0]))

    writer.add_listener(on_commit)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(writer.run(stop)), asyncio.create_task(projector.run(stop))]
    app = create_app(pool, token=token)
    runner = make_runner(app)  # as the daemon serves it
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    site = web.SockSite(runner, sock)
    await site.start()
    url = f"http://127.0.0.1:{port}"
    say(f"API on {url} (pool max_size {args.pool_size}); writer + projector running")

    ingest = Ingest(writer, records, args.rate)
    feeding = asyncio.create_task(ingest.run())
    lag = LoopLag()
    probing = asyncio.create_task(lag.run())
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(
        target=client_process,
        args=(child, url, target.dsn, token, ids, args.concurrency, args.seconds, args.seed + 1),
        daemon=True,
    )
    windows: dict[str, dict[str, Any]] = {}
    client_result: dict[str, Any] = {}
    try:
        await asyncio.sleep(2.0)  # ingest settles before the first window
        process.start()
        child.close()
        loop = asyncio.get_running_loop()
        marks: dict[str, tuple[float, int, int, float, float, float]] = {}
        while True:
            message = await loop.run_in_executor(None, parent.recv)
            if isinstance(message, dict):
                client_result = message
                break
            what, name = message
            now = time.monotonic()
            state = (now, writer.head, ingest.offered, process_cpu_s(), machine_busy_cpu_s(),
                     projector.position)
            if what == "start":
                say(f"  measuring {name}: {args.concurrency} concurrent for {args.seconds:.0f}s")
                marks[name] = state
                lag.samples.clear()
            else:
                t0, head0, offered0, cpu0, busy0, _ = marks[name]
                elapsed = now - t0
                windows[name] = {
                    "ingest_events_per_s": round((writer.head - head0) / elapsed, 1),
                    "offered_events_per_s": round((ingest.offered - offered0) / elapsed, 1),
                    "projector_behind_events_at_end": writer.head - projector.position,
                    "server_process_cpu_s": round(process_cpu_s() - cpu0, 2),
                    "machine_busy_cpu_s": round(machine_busy_cpu_s() - busy0, 2),
                    "seconds": round(elapsed, 2),
                    "server_loop_lag_p50_ms": percentile_ms(lag.samples, 0.5),
                    "server_loop_lag_p99_ms": percentile_ms(lag.samples, 0.99),
                    "server_loop_lag_max_ms": round(max(lag.samples) * 1000, 2),
                    "projector_batches": projector.stats.batches,
                }
                w = windows[name]
                say(f"    ingest {w['ingest_events_per_s']:,.0f} events/s stored, projector "
                    f"{w['projector_behind_events_at_end']:,} behind; server loop lag p50 "
                    f"{w['server_loop_lag_p50_ms']} ms p99 {w['server_loop_lag_p99_ms']} ms; "
                    f"server process CPU {w['server_process_cpu_s']}s, machine busy "
                    f"{w['machine_busy_cpu_s']} CPU-s in {w['seconds']}s")
            parent.send("ok")
        await loop.run_in_executor(None, process.join, 30)
    finally:
        feeding.cancel()
        probing.cancel()
        await asyncio.gather(feeding, probing, return_exceptions=True)
        if process.is_alive():
            process.terminate()
        await runner.cleanup()
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pool.close()

    check_client(client_result)
    stored = writer.stats.stored
    if writer.head != head + stored or writer.stats.quarantined:
        raise CorrectnessError(f"writer: head {writer.head} != {head} + {stored} stored, "
                               f"stats {writer.stats}")
    return {"client": client_result, "windows": windows, "max_behind_s": ingest.max_behind_s,
            "stored": stored, "projector_position": projector.position,
            "writer_head": writer.head}


# -- phase 3, layout "roles": each role in a process of its own ----------------------------------


def app_role_process(pipe: Connection, role: str, dsn: str, embedded: bool,
                     overrides: dict[str, Any], token: str, metrics_dir: str) -> None:
    """Entry point of a project or serve process: `recorder run --role R`."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"{role} %(levelname)s %(name)s: %(message)s")
    use_multiprocess_dir(metrics_dir)  # as under `recorder run`: metrics in shared files
    try:
        run_event_loop(_app_role(pipe, role, DatabaseTarget(dsn=dsn, embedded=embedded),
                                 overrides, token))
    except Exception as exc:
        with contextlib.suppress(Exception):
            pipe.send((False, f"{type(exc).__name__}: {exc}"))
        raise


async def _app_role(pipe: Connection, role: str, target: DatabaseTarget,
                    overrides: dict[str, Any], token: str) -> int:
    settings = dataclasses.replace(load_settings(environ={}), **overrides,
                                   api_token=Secret(token))
    async with build_app(settings, target, roles=(role,)) as app:
        tune_garbage_collector()  # as `recorder run` does
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop), name=role)
        lag = LoopLag()
        probing = asyncio.create_task(lag.run()) if role == "serve" else None
        projector = app.projector
        deadline = time.monotonic() + 30
        while projector is not None and not (projector.is_leader and app.wakeups.listening):
            if task.done() or time.monotonic() > deadline:
                raise CorrectnessError(f"the projector did not start ({app.supervisor.failed})")
            await asyncio.sleep(0.01)

        def status() -> dict[str, Any]:
            return {"alive": not task.done(), "failed": list(app.supervisor.failed),
                    "position": projector.position if projector is not None else None,
                    "batches": projector.stats.batches if projector is not None else None}

        def backends() -> dict[str, int | None]:
            if projector is None:
                return {}
            leader = getattr(projector, "_leader", None)
            return {"projector_backend": server_pid(getattr(leader, "connection", None))}

        def lag_samples(clear: bool) -> list[float]:
            samples = list(lag.samples)
            if clear:
                lag.samples.clear()
            return samples

        pipe.send((True, {"backends": backends()}))
        try:
            await serve_commands(pipe, {"status": status, "backends": backends,
                                        "lag_samples": lag_samples})
        finally:
            if probing is not None:
                probing.cancel()
            stop.set()
            code = await task
    pipe.send((True, {"code": code, "failed": list(app.supervisor.failed),
                      "position": projector.position if projector is not None else None}))
    return 0


def writer_process(pipe: Connection, dsn: str, embedded: bool, workload: Workload, count: int,
                   rate: float, metrics_dir: str) -> None:
    """Entry point of the ingest process: the writer of the ingest role, fed open loop."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="ingest %(levelname)s %(name)s: %(message)s")
    use_multiprocess_dir(metrics_dir)
    try:
        run_event_loop(_writer(pipe, DatabaseTarget(dsn=dsn, embedded=embedded), workload,
                               count, rate))
    except Exception as exc:
        with contextlib.suppress(Exception):
            pipe.send((False, f"{type(exc).__name__}: {exc}"))
        raise


async def _writer(pipe: Connection, target: DatabaseTarget, workload: Workload, count: int,
                  rate: float) -> int:
    started = time.perf_counter()
    records = workload.events(count)
    del workload
    built_s = time.perf_counter() - started
    defaults = load_settings(environ={})
    # As recorder.app builds the ingest role's writer, with its commit metrics.
    writer = EventWriter(target, queue_size=defaults.queue_size,
                         batch_size=defaults.writer_batch_size,
                         batch_wait_ms=defaults.writer_batch_wait_ms)
    metrics = Metrics()
    metrics.attach_writer(writer, [])
    stop = asyncio.Event()
    tasks = [asyncio.create_task(writer.run(stop), name="writer")]
    if metrics.multiprocess:
        tasks.append(asyncio.create_task(metrics.run(stop), name="metrics"))
    tune_garbage_collector()
    ingest = Ingest(writer, records, rate)
    feeding: list[asyncio.Task[None]] = []

    def start() -> None:
        feeding.append(asyncio.create_task(ingest.run()))

    def status() -> dict[str, Any]:
        return {"alive": not tasks[0].done(), "head": writer.head, "offered": ingest.offered,
                "stored": writer.stats.stored, "max_behind_s": ingest.max_behind_s}

    def backends() -> dict[str, int | None]:
        leader = getattr(writer, "_leader", None)
        return {"writer_backend": server_pid(getattr(leader, "connection", None))}

    pipe.send((True, {"records": len(records), "built_s": built_s}))
    try:
        await serve_commands(pipe, {"start": start, "status": status, "backends": backends})
    finally:
        for task in feeding:
            task.cancel()
        await asyncio.gather(*feeding, return_exceptions=True)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    pipe.send((True, {"head": writer.head, "stats": dataclasses.asdict(writer.stats),
                      "max_behind_s": ingest.max_behind_s, "offered": ingest.offered}))
    return 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def measure_roles(target: DatabaseTarget, workload: Workload, args: argparse.Namespace,
                        ids: list[str], head: int) -> dict[str, Any]:
    phases = 3
    budget_s = phases * (args.seconds + 3) + args.spare_s
    count = int(args.rate * budget_s)
    token = secrets.token_urlsafe(24)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    metrics_dir = tempfile.mkdtemp(prefix="recorder-bench-metrics-")
    overrides = {"api_listen": f"127.0.0.1:{port}", "api_workers": args.api_workers}
    project = ChildProcess("project", app_role_process, "project", target.dsn, target.embedded,
                           overrides, token, metrics_dir)
    ingest = ChildProcess("ingest", writer_process, target.dsn, target.embedded, workload,
                          count, args.rate, metrics_dir)
    serves = [
        ChildProcess(f"serve.{n}" if args.api_workers > 1 else "serve", app_role_process,
                     "serve", target.dsn, target.embedded, overrides, token, metrics_dir)
        for n in range(1, args.api_workers + 1)
    ]
    started: list[ChildProcess] = []
    finals: dict[str, Any] = {}
    windows: dict[str, dict[str, Any]] = {}
    client_result: dict[str, Any] = {}
    postmaster = await postmaster_pid(target.dsn)
    try:
        for child in (project, ingest, *serves):  # recorder run's start order
            started.append(child)
            info = await child.start(timeout_s=600)
            if child is ingest:
                say(f"built {info['records']:,} ingest events in the ingest process in "
                    f"{info['built_s']:.1f}s ({budget_s:.0f}s at {args.rate:,.0f}/s)")
        say(f"API on {url} ({args.api_workers} serve process(es), recorder.app's pool); "
            "ingest (writer) and project in processes of their own")
        await ingest.call("start")
        pids: dict[str, int | None] = {"ingest": ingest.pid, "project": project.pid,
                                       **{s.name: s.pid for s in serves}, "bench": None}

        async def backend_pids() -> dict[str, int | None]:
            return {**await ingest.call("backends"), **await project.call("backends")}

        marks: dict[str, tuple[float, dict[str, Any], CpuWindow, BackendCpu]] = {}

        async def on_start(name: str, client_pid: int) -> None:
            say(f"  measuring {name}: {args.concurrency} concurrent for {args.seconds:.0f}s")
            window = CpuWindow({**pids, "client": client_pid}, postmaster)
            backends = BackendCpu()
            backends.start(await backend_pids())
            for serve in serves:
                await serve.call("lag_samples", True)
            state = await ingest.call("status")
            window.start()
            marks[name] = (time.monotonic(), state, window, backends)

        async def on_stop(name: str, client_pid: int) -> None:
            t0, state0, window, backends = marks[name]
            cpu, window_s = window.used()
            backend_cpu = backends.used(await backend_pids())
            state = await ingest.call("status")
            projected = await project.call("status")
            elapsed = time.monotonic() - t0
            lags = [x for serve in serves for x in await serve.call("lag_samples", True)]
            if not state["alive"]:
                raise CorrectnessError("the ingest process's writer stopped")
            stored = state["head"] - state0["head"]
            cpu["serve"] = sum(cpu.get(s.name) or 0.0 for s in serves)
            windows[name] = {
                "ingest_events_per_s": round(stored / elapsed, 1),
                "offered_events_per_s": round((state["offered"] - state0["offered"]) / elapsed,
                                              1),
                "projector_behind_events_at_end": state["head"] - projected["position"],
                "cpu_s": rounded({**cpu, **backend_cpu}),
                "cpu_us_per_ingested_event": per_event_us({**cpu, **backend_cpu}, stored),
                "seconds": round(window_s, 2),
                "server_loop_lag_p50_ms": percentile_ms(lags, 0.5) if lags else None,
                "server_loop_lag_p99_ms": percentile_ms(lags, 0.99) if lags else None,
                "server_loop_lag_max_ms": round(max(lags) * 1000, 2) if lags else None,
                "projector_batches": projected["batches"],
            }
            w = windows[name]
            say(f"    ingest {w['ingest_events_per_s']:,.0f} events/s stored, projector "
                f"{w['projector_behind_events_at_end']:,} behind; serve loop lag p50 "
                f"{w['server_loop_lag_p50_ms']} ms p99 {w['server_loop_lag_p99_ms']} ms; "
                f"CPU s {w['cpu_s']} in {w['seconds']}s")

        await asyncio.sleep(2.0)  # ingest settles before the first window
        client_result = await drive_client(url, target.dsn, token, ids, args, on_start, on_stop)
    finally:
        for child in sorted(started, key=lambda c: ("serve", "ingest", "project").index(
                c.name.split(".")[0])):  # recorder run's drain order
            try:
                finals[child.name] = await child.stop()
            except CorrectnessError as exc:
                say(f"  {exc}")
                finals[child.name] = None
        shutil.rmtree(metrics_dir, ignore_errors=True)

    check_client(client_result)
    final = finals.get("ingest") or {}
    stats = final.get("stats") or {}
    stored = stats.get("stored", 0)
    if final.get("head") != head + stored or stats.get("quarantined"):
        raise CorrectnessError(f"ingest writer: head {final.get('head')} != {head} + {stored} "
                               f"stored, stats {stats}")
    for name, result in finals.items():
        if result is None or result.get("code") not in (0, None):
            raise CorrectnessError(f"the {name} process stopped badly: {result}")
    return {"client": client_result, "windows": windows,
            "max_behind_s": final["max_behind_s"], "stored": stored,
            "projector_position": (finals.get("project") or {}).get("position"),
            "writer_head": final["head"], "api_workers": args.api_workers}


async def drive_client(url: str, dsn: str, token: str, ids: list[str], args: argparse.Namespace,
                       on_start: Any, on_stop: Any) -> dict[str, Any]:
    """The client process, its windows marked by `on_start(name, pid)` and `on_stop(...)`."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(
        target=client_process,
        args=(child, url, dsn, token, ids, args.concurrency, args.seconds, args.seed + 1),
        daemon=True,
    )
    loop = asyncio.get_running_loop()
    try:
        process.start()
        child.close()
        while True:
            message = await loop.run_in_executor(None, parent.recv)
            if isinstance(message, dict):
                await loop.run_in_executor(None, process.join, 30)
                return message
            what, name = message
            await (on_start if what == "start" else on_stop)(name, process.pid)
            parent.send("ok")
    finally:
        if process.is_alive():
            process.terminate()


def check_client(client_result: dict[str, Any]) -> None:
    if "error" in client_result:
        raise CorrectnessError(f"client process failed: {client_result['error']}")
    for name, figures in client_result.items():
        if figures["failures"]:
            raise CorrectnessError(f"{name}: {figures['failures']} bad answers, e.g. "
                                   f"{figures['failure_examples']}")


# -- main ----------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    workload = Workload(args.seed, args.conversations, args.identities)
    # inprocess first: the roles layout hands a copy of the workload to its ingest process,
    # so this process's copy would not know the events it made.
    layouts = ["inprocess", "roles"] if args.layout == "both" else [args.layout]
    runs: dict[str, dict[str, Any]] = {}
    async with bench_database() as (target, database):
        settings = await server_settings(target.dsn)
        say(f"server {settings}")

        say(f"phase load: {args.events:,} events over {args.conversations:,} conversations, "
            f"generated and COPYed into events ({args.copy_chunk:,} per COPY)")
        load_s = await load_log(target.dsn, workload, args.events, args.copy_chunk)
        say(f"  {load_s:.1f}s ({args.events / load_s:,.0f} events/s)")

        if args.project == "rebuild":
            say(f"phase project: recorder.rebuild swap=True over 0 -> {args.events:,} "
                f"(batch {args.load_batch:,})")
            project_s = await rebuild_log(target, args.events, args.load_batch)
        else:
            say(f"phase project: Projector catch-up 0 -> {args.events:,} "
                f"(batch {args.load_batch:,})")
            project_s = await project_log(target, args.events, args.load_batch)
        counts = await table_counts(target.dsn)
        say(f"  {project_s:.1f}s ({args.events / project_s:,.0f} events/s); rows {counts}")

        connection = await asyncpg.connect(target.dsn)
        try:
            ids = [r[0] for r in await connection.fetch(
                "SELECT conversation_id FROM conversations ORDER BY conversation_id")]
        finally:
            await connection.close()
        if len(ids) != args.conversations:
            raise CorrectnessError(f"{len(ids)} conversations projected, "
                                   f"expected {args.conversations}")

        for layout in layouts:
            where = ("ingest (writer), project and serve each in a process of its own"
                     if layout == "roles" else "writer, projector and API in this process")
            say(f"[{layout}] phase measure: ingest at {args.rate:,.0f} events/s open loop, "
                f"{where}, client in a separate process")
            head = await log_head(target.dsn)
            measure = measure_roles if layout == "roles" else measure_inprocess
            runs[layout] = await measure(target, workload, args, ids, head)
        final_counts = await table_counts(target.dsn)

    summaries = {layout: layout_summary(layout, runs[layout], args) for layout in layouts}
    primary = summaries["roles" if "roles" in summaries else layouts[0]]
    total_s = time.perf_counter() - started
    say(f"total {total_s:.0f}s")
    return {
        **primary,
        "events": args.events,
        "conversations": args.conversations,
        "rows_before_measure": counts,
        "rows_after": final_counts,
        "load": f"copy+{args.project}",
        "load_s": round(load_s, 1),
        "project_s": round(project_s, 1),
        "concurrency": args.concurrency,
        "seconds_per_window": args.seconds,
        "layouts": summaries,
        "runs": runs,
        "database": database,
        "server": settings,
        "total_s": round(total_s, 1),
        "budget": BUDGET,
        "absolute_budget": ABSOLUTE_BUDGET,
    }


def layout_summary(layout: str, run: dict[str, Any], args: argparse.Namespace,
                   ) -> dict[str, Any]:
    client, windows = run["client"], run["windows"]
    conv, msgs, db = client["conversation"], client["messages"], client["db"]
    ingest_rate = round(
        sum(w["ingest_events_per_s"] * w["seconds"] for w in windows.values())
        / sum(w["seconds"] for w in windows.values()), 1)
    p99_ratio = (round(conv["p99_ms"] / db["p99_ms"], 2)
                 if conv["p99_ms"] is not None and db["p99_ms"] else None)
    within = {"p99_ratio": None if p99_ratio is None else p99_ratio <= BUDGET["p99_ratio_max"]}
    absolute = {"p99_ms": conv["p99_ms"] is not None
                and conv["p99_ms"] <= ABSOLUTE_BUDGET["p99_ms_max"]}
    say(f"[{layout}] conversation by id: p50 {conv['p50_ms']} ms, p99 {conv['p99_ms']} ms, "
        f"{conv['rps']:,.0f} req/s")
    say(f"[{layout}] messages:           p50 {msgs['p50_ms']} ms, p99 {msgs['p99_ms']} ms, "
        f"{msgs['rps']:,.0f} req/s")
    say(f"[{layout}] bare asyncpg:       p50 {db['p50_ms']} ms, p99 {db['p99_ms']} ms, "
        f"{db['rps']:,.0f} q/s")
    say(f"[{layout}] p99_ratio {p99_ratio} (conversation p99 / bare query p99, same run); "
        f"ingest during measurement {ingest_rate:,.0f} events/s (offered {args.rate:,.0f}); "
        f"within budget: {within}")
    return {
        "layout": layout,
        "p50_ms": conv["p50_ms"],
        "p99_ms": conv["p99_ms"],
        "rps": conv["rps"],
        "messages_p50_ms": msgs["p50_ms"],
        "messages_p99_ms": msgs["p99_ms"],
        "messages_rps": msgs["rps"],
        "db_p50_ms": db["p50_ms"],
        "db_p99_ms": db["p99_ms"],
        "db_rps": db["rps"],
        "p99_ratio": p99_ratio,
        "ingest_events_per_s": ingest_rate,
        "ingest_offered_events_per_s": args.rate,
        "ingest_max_behind_s": round(run["max_behind_s"], 3),
        "ingest_stored": run["stored"],
        "api_pool_size": args.pool_size if layout == "inprocess" else "recorder.app's",
        "api_workers": run.get("api_workers", 1),
        "projector_behind_events_max": max(w["projector_behind_events_at_end"]
                                           for w in windows.values()),
        "cpu_s_conversation_window": windows["conversation"].get("cpu_s"),
        "within_budget": within,
        "within_absolute_budget": absolute,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--conversations", type=int, default=50_000)
    parser.add_argument("--identities", type=int, default=4, help="consumer identities")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--copy-chunk", type=int, default=20_000)
    parser.add_argument("--project", choices=("rebuild", "projector"), default="rebuild",
                        help="how the loaded log is projected: recorder.rebuild with swap "
                             "(default), or a Projector catching up")
    parser.add_argument("--load-batch", type=int, default=20_000,
                        help="events per batch while projecting the loaded log")
    parser.add_argument("--rate", type=float, default=5_000.0,
                        help="events/s offered to the writer during the measurement [5000]")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measured window")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--layout", choices=(*LAYOUTS, "both"), default="roles",
                        help="roles: ingest (writer), project and serve each in a process of "
                             "its own, as `recorder run` runs them; inprocess: all in this "
                             "process (as before); both: inprocess, then roles [roles]")
    parser.add_argument("--api-workers", type=int, default=1,
                        help="serve processes on the API's port, roles layout "
                             "(RECORDER_API_WORKERS) [1]")
    parser.add_argument("--pool-size", type=int, default=4,
                        help="the API's asyncpg pool max_size, inprocess layout (the roles "
                             "layout uses recorder.app's pool)")
    parser.add_argument("--spare-s", type=float, default=10.0,
                        help="pre-built ingest events beyond the windows, in seconds")
    args = parser.parse_args(argv)
    if min(args.events, args.conversations, args.concurrency, args.pool_size,
           args.api_workers) <= 0:
        parser.error("--events, --conversations, --concurrency, --pool-size, --api-workers "
                     "must be positive")
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("--rate and --seconds must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # uvloop, as the CLI runs the daemon (and the role processes here).
    return report(lambda: run_event_loop(bench(args)))  # type: ignore[arg-type,return-value]


if __name__ == "__main__":
    sys.exit(main())
