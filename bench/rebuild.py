"""`recorder rebuild` throughput, against a raw COPY of the same rows on the same server.

    python bench/rebuild.py [--events N] [--conversations C] [--eras K] [--batch-size B]
                            [--max-conversations M] [--seed S] [--no-verify] [--profile PATH]

1. Load: N events over C conversations (bench/append.py's seeded workload: UPSERTs, text and
   rich content messages, accept/read receipts; with --eras K, K stretches of the log over
   C / K conversations each) are COPYed into `events` with contiguous positions 1..N,
   log_head N; then VACUUM (ANALYZE) events and CHECKPOINT, so the rebuild's scan pays for no
   hint bits and no checkpoint of the load runs during it.
2. Live projection (unless --no-verify): a Projector folds the log incrementally into the
   live tables, batch 5000, as `recorder run` does (timed apart, not the figure).
3. Rebuild: `recorder.projection.rebuild.rebuild(target)`, the code path of `recorder
   rebuild`, on uvloop as the command line runs it: it replays 0..N into scratch tables and
   compares them with the live ones, which must be equal (the check that the rebuild folds
   as the incremental projector does, at scale). With --no-verify the live tables stay
   empty at position N and the rebuild swaps its tables in (`--swap`), so the swap's time is
   in the figures instead. events_per_s = N / replay seconds (the report's figure: read,
   fold, write, keys); total_events_per_s = N / the whole call (compare and swap included).
   CPU of this process and of the server, and this process's peak RSS (reset before the
   call), over the call.
4. COPY baseline, in the same run: the same N event rows (the workload regenerated from the
   seed, generation untimed) COPYed by asyncpg (binary) into an unlogged scratch table
   `LIKE events INCLUDING DEFAULTS` (no indexes), --copy-chunk rows per COPY -> copy_events_per_s;
   ratio = events_per_s / copy_events_per_s.

--profile PATH writes cProfile statistics of the rebuild call to PATH (`python -m pstats`) and
prints its top functions by own time to stderr; such a run is slower.

Database rule as bench/append.py: with RECORDER_DATABASE_URL set, a scratch database
`recorder_bench_<pid>` on that server (created, migrated, dropped); otherwise the embedded
server in a temporary state directory.

Human-readable progress goes to stderr; the last line on stdout is one JSON object.
Timings are reported, never asserted: only a correctness failure (a rebuild that differs from
the incremental projection, a swap that did not happen, wrong row counts) exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import inspect
import io
import pstats
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import asyncpg

import recorder

# bench/ is not a package: reuse append.py's workload, database rule and helpers.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from append import (
    COPY_COLUMNS,
    CorrectnessError,
    Workload,
    bench_database,
    copy_rows,
    report,
    say,
    server_settings,
)
from roles import postgres_cpu_s, postmaster_pid, process_cpu_s

from recorder.db.target import DatabaseTarget
from recorder.projection import PROJECTION_NAME
from recorder.projection import sql as projection_sql
from recorder.projection.projector import Projector
from recorder.projection.rebuild import rebuild

BUDGET_EVENTS_PER_S = 100_000
PROJECTION_TABLES = ("conversations", "dialogs", "participants", "messages", "receipts")
REBUILD_PARAMETERS = inspect.signature(rebuild).parameters
DEFAULT_BATCH_SIZE: int = REBUILD_PARAMETERS["batch_size"].default
#: None when the rebuild under test has no such parameter (the code before issue 14's rework)
DEFAULT_MAX_CONVERSATIONS: int | None = getattr(
    REBUILD_PARAMETERS.get("max_conversations"), "default", None)


# -- memory from /proc (CPU: bench/roles.py) ----------------------------------------------------


def rss_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


# -- the log -------------------------------------------------------------------------------------


def chunks(args: argparse.Namespace) -> Any:
    """(first position, binary COPY rows) of the log, chunk by chunk: --eras consecutive
    stretches of the log, each over its own --conversations / --eras conversations (a new
    seeded workload per era), so that conversations end and new ones begin as in a real log."""
    now = time.time()
    done = 0
    for era in range(args.eras):
        workload = Workload(args.seed + era, max(1, args.conversations // args.eras),
                            args.identities)
        era_end = args.events * (era + 1) // args.eras
        while done < era_end:
            records = workload.events(min(args.copy_chunk, era_end - done))
            for r in records:
                r.received_at = now
            yield done + 1, copy_rows(records, done + 1)
            done += len(records)


async def load_log(dsn: str, args: argparse.Namespace) -> float:
    connection = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        for _first, rows in chunks(args):
            await connection.copy_records_to_table("events", records=rows, columns=COPY_COLUMNS)
        await connection.execute("UPDATE log_head SET position = $1 WHERE id = 1", args.events)
        count, low, high = await connection.fetchrow(
            "SELECT count(*), min(position), max(position) FROM events")
        if (count, low, high) != (args.events, 1, args.events):
            raise CorrectnessError(f"log not contiguous: {count=} {low=} {high=}")
        await connection.execute("VACUUM (ANALYZE) events")
        try:
            await connection.execute("CHECKPOINT")
        except asyncpg.InsufficientPrivilegeError:
            say("  (no CHECKPOINT: not allowed for this role)")
    finally:
        await connection.close()
    return time.perf_counter() - started


async def copy_baseline(dsn: str, args: argparse.Namespace) -> float:
    """Seconds to COPY the same N event rows into an unlogged, index-free `LIKE events`."""
    connection = await asyncpg.connect(dsn)
    elapsed = 0.0
    try:
        await connection.execute("DROP TABLE IF EXISTS bench_copy")
        await connection.execute(
            "CREATE UNLOGGED TABLE bench_copy (LIKE events INCLUDING DEFAULTS)")
        for _first, rows in chunks(args):
            started = time.perf_counter()
            await connection.copy_records_to_table("bench_copy", records=rows,
                                                   columns=COPY_COLUMNS)
            elapsed += time.perf_counter() - started
        count = await connection.fetchval("SELECT count(*) FROM bench_copy")
        if count != args.events:
            raise CorrectnessError(f"bench_copy holds {count} rows, expected {args.events}")
        await connection.execute("DROP TABLE bench_copy")
    finally:
        await connection.close()
    return elapsed


async def table_counts(dsn: str) -> dict[str, int]:
    connection = await asyncpg.connect(dsn)
    try:
        return {t: int(await connection.fetchval(f"SELECT count(*) FROM {t}"))
                for t in PROJECTION_TABLES}
    finally:
        await connection.close()


# -- the live projection -------------------------------------------------------------------------


async def project_live(target: DatabaseTarget, head: int) -> float:
    projector = Projector(target, batch_size=5000)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(projector.run(stop))
    try:
        while projector.position < head:
            waiting = asyncio.ensure_future(projector.wait_for_position(head, timeout_s=10))
            await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            if task.done():
                raise CorrectnessError(f"projector stopped at {projector.position}: "
                                       f"{task.exception()!r}")
            say(f"  projected {projector.position:,}/{head:,} "
                f"({projector.position / (time.perf_counter() - started):,.0f} events/s)")
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    return time.perf_counter() - started


async def set_live_position(dsn: str, head: int) -> None:
    """Empty live tables at the head: the rebuild then swaps instead of folding them inline."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(projection_sql.ENSURE_POSITION, PROJECTION_NAME)
        await connection.execute(
            "UPDATE projection_positions SET position = $2 WHERE name = $1", PROJECTION_NAME, head)
    finally:
        await connection.close()


# -- the rebuild ---------------------------------------------------------------------------------


async def run_rebuild(target: DatabaseTarget, args: argparse.Namespace,
                      postmaster: int | None) -> dict[str, Any]:
    head = args.events
    next_report = [time.perf_counter() + 10]
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if time.perf_counter() >= next_report[0]:
            next_report[0] += 10
            say(f"  rebuilt {done:,}/{total:,} "
                f"({done / (time.perf_counter() - started):,.0f} events/s)")

    peak_reset = reset_peak_rss()
    rss_before = rss_mb("VmRSS")
    cpu, server_cpu = process_cpu_s(), postgres_cpu_s(postmaster)
    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    options: dict[str, Any] = {}
    if args.max_conversations is not None:
        options["max_conversations"] = args.max_conversations
    try:
        result = await rebuild(target, progress=progress, batch_size=args.batch_size,
                               swap=not args.verify, **options)
    finally:
        if profiler is not None:
            profiler.disable()
    elapsed = time.perf_counter() - started
    cpu, server_cpu = process_cpu_s() - cpu, postgres_cpu_s(postmaster) - server_cpu
    peak = rss_mb("VmHWM")
    if profiler is not None:
        profiler.dump_stats(args.profile)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        say(text.getvalue())
    say(f"  replay {result.seconds:.2f}s ({result.events_per_s:,.0f} events/s), compare "
        f"{result.compare_seconds:.2f}s, whole call {elapsed:.2f}s; client CPU {cpu:.1f}s, "
        f"server CPU {server_cpu:.1f}s; peak RSS {peak:.0f} MB (before {rss_before:.0f} MB)")
    if result.position != head or result.events != head:
        raise CorrectnessError(f"rebuild stopped at {result.position}, expected {head}")
    if args.verify and not result.equal:
        raise CorrectnessError(f"the rebuild differs from the incremental projection:\n"
                               f"{result.as_text()}")
    if not args.verify and not result.swapped:
        raise CorrectnessError(f"the rebuild did not swap: {result.as_text()}")
    return {
        "events_per_s": round(result.events_per_s, 1),
        "total_events_per_s": round(head / elapsed, 1),
        "replay_s": round(result.seconds, 3),
        "compare_s": round(result.compare_seconds, 3),
        "rebuild_s": round(elapsed, 3),
        "client_cpu_s": round(cpu, 2),
        "server_cpu_s": round(server_cpu, 2),
        "peak_rss_mb": round(peak, 1) if peak_reset else None,
        "rss_before_mb": round(rss_before, 1),
        "equal": result.equal,
        "swapped": result.swapped,
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    async with bench_database() as (target, database):
        settings = await server_settings(target.dsn)
        say(f"server {settings}; recorder from {Path(recorder.__file__).parent}")
        postmaster = await postmaster_pid(target.dsn)
        say(f"load: {args.events:,} events over {args.conversations:,} conversations by COPY")
        load_s = await load_log(target.dsn, args)
        say(f"  {load_s:.1f}s (generation included), VACUUM and CHECKPOINT done")

        live_s = None
        if args.verify:
            say("live projection: a Projector (batch 5000) folds the log incrementally")
            live_s = await project_live(target, args.events)
            say(f"  {live_s:.1f}s ({args.events / live_s:,.0f} events/s)")
        else:
            await set_live_position(target.dsn, args.events)
        live_counts = await table_counts(target.dsn)

        say(f"rebuild (batch_size {args.batch_size:,}, "
            f"{'compare with the live projection' if args.verify else 'swap'})")
        figures = await run_rebuild(target, args, postmaster)
        counts = await table_counts(target.dsn)
        if args.verify and counts != live_counts:
            raise CorrectnessError(f"compare-only rebuild changed the live tables: {counts}")
        say(f"  rows: {counts}")

        say(f"COPY baseline: the same {args.events:,} event rows into an unlogged LIKE events, "
            f"{args.copy_chunk:,} per COPY")
        copy_s = await copy_baseline(target.dsn, args)
        copy_events_per_s = args.events / copy_s
        ratio = figures["events_per_s"] / copy_events_per_s
        say(f"  {copy_events_per_s:,.0f} events/s ({copy_s:.2f}s); rebuild/COPY ratio {ratio:.2f}")

    within = figures["events_per_s"] >= BUDGET_EVENTS_PER_S
    total_s = time.perf_counter() - started
    say(f"rebuild {figures['events_per_s']:,.0f} events/s (whole call "
        f"{figures['total_events_per_s']:,.0f}/s), COPY {copy_events_per_s:,.0f} events/s, "
        f"ratio {ratio:.2f}; total {total_s:.0f}s; within budget "
        f"(>= {BUDGET_EVENTS_PER_S:,} events/s): {within}")
    return {
        **figures,
        "copy_events_per_s": round(copy_events_per_s, 1),
        "copy_s": round(copy_s, 3),
        "ratio": round(ratio, 3),
        "events": args.events,
        "conversations": args.conversations,
        "eras": args.eras,
        "rows": counts,
        "batch_size": args.batch_size,
        "max_conversations": args.max_conversations,
        "verified": args.verify,
        "live_projection_s": None if live_s is None else round(live_s, 1),
        "load_s": round(load_s, 1),
        "copy_chunk": args.copy_chunk,
        "seed": args.seed,
        "database": database,
        "server": settings,
        "budget_events_per_s": BUDGET_EVENTS_PER_S,
        "within_budget": within,
        "total_s": round(total_s, 1),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--identities", type=int, default=4, help="consumer identities")
    parser.add_argument("--eras", type=int, default=1,
                        help="stretches of the log with conversations of their own (default 1: "
                             "every conversation may get events anywhere in the log)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"the rebuild's batch_size (default: its own, "
                             f"{DEFAULT_BATCH_SIZE:,})")
    parser.add_argument("--max-conversations", type=int, default=DEFAULT_MAX_CONVERSATIONS,
                        help="the rebuild's max_conversations (default: its own, "
                             f"{DEFAULT_MAX_CONVERSATIONS}; absent from older code)")
    parser.add_argument("--copy-chunk", type=int, default=20_000)
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip the incremental projection; the rebuild swaps instead")
    parser.add_argument("--profile", type=Path, default=None, metavar="PATH",
                        help="cProfile the rebuild call into PATH")
    args = parser.parse_args(argv)
    if min(args.events, args.conversations, args.batch_size, args.copy_chunk, args.eras) <= 0:
        parser.error("--events, --conversations, --batch-size, --copy-chunk and --eras must be "
                     "positive")
    if args.max_conversations is not None and DEFAULT_MAX_CONVERSATIONS is None:
        parser.error("--max-conversations: this rebuild has no such parameter")
    return args


def run_event_loop(work: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """uvloop where installed, as `recorder` runs its commands."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    return uvloop.run(work)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run: Callable[[], dict[str, Any]] = lambda: run_event_loop(bench(args))  # noqa: E731
    return report(run)


if __name__ == "__main__":
    sys.exit(main())
