"""Where the incremental projector's database time goes, statement by statement.

    python bench/projector.py [--events N] [--conversations C] [--batch-size B] [--seed S]

The profile behind issue 14's projection-lag figure: `bench/ingest.py` shows the projector's
PostgreSQL backend as the largest single CPU consumer on the path; this bench says which of
its statements spend it.

1. Load: N events over C conversations (bench/append.py's seeded workload) are COPYed into
   `events` with contiguous positions 1..N, log_head N, then VACUUM (ANALYZE).
2. Project: a Projector (the `project` role's code) steps from 0 to N, `--batch-size` events
   per transaction (default 70: the mean events per commit `bench/ingest.py` sees at 5,000
   events/s, so each step is the size the live projector folds). asyncpg's query logger
   times every statement (a round trip each, as the projector issues them one by one).
3. Report: events/s, the backend's CPU (from /proc) per event, this process's CPU per event,
   and per statement: calls, total and mean round-trip time, share of all statement time.

Database rule as bench/append.py: RECORDER_DATABASE_URL names a server for a scratch
database, else an embedded server in a temporary directory. The last stdout line is JSON;
timings are reported, never asserted (only a projection that stops short exits non-zero).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg

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
from roles import CLOCK_TICKS, cpu_ticks, process_cpu_s

from recorder.projection.projector import Projector


def statement_name(query: str) -> str:
    """A statement's first words and its table: enough to tell the projector's apart."""
    words = query.split()
    for index, word in enumerate(words):
        following = words[index + 1] if index + 1 < len(words) else ""
        if word.upper() in ("FROM", "INTO", "UPDATE") and following.isidentifier():
            return f"{' '.join(words[:2])} … {following}"
    return " ".join(words[:3])


async def load(dsn: str, args: argparse.Namespace) -> int:
    records = Workload(args.seed, args.conversations, args.identities).events(args.events)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.copy_records_to_table(
            "events", records=copy_rows(records), columns=COPY_COLUMNS)
        await connection.execute("UPDATE log_head SET position = $1", len(records))
        await connection.execute("VACUUM (ANALYZE) events")
    finally:
        await connection.close()
    return len(records)


async def bench(args: argparse.Namespace) -> dict[str, object]:
    started = time.perf_counter()
    async with bench_database() as (target, database):
        settings = await server_settings(target.dsn)
        events = await load(target.dsn, args)
        say(f"loaded {events:,} events over {args.conversations:,} conversations")
        projector = Projector(target, batch_size=args.batch_size)
        connection = await projector._leader.acquire(asyncio.Event())
        if connection is None:
            raise CorrectnessError("the projector did not get its connection")
        seconds: collections.Counter[str] = collections.Counter()
        calls: collections.Counter[str] = collections.Counter()

        def timed(record: asyncpg.connection.LoggedQuery) -> None:
            name = statement_name(record.query)
            seconds[name] += record.elapsed
            calls[name] += 1

        connection.add_query_logger(timed)
        backend = connection.get_server_pid()
        backend_before, client_before = cpu_ticks(backend), process_cpu_s()
        begun = time.perf_counter()
        while await projector.step(connection):
            pass
        elapsed = time.perf_counter() - begun
        backend_cpu_s = (cpu_ticks(backend) - backend_before) / CLOCK_TICKS
        client_cpu_s = process_cpu_s() - client_before
        await projector._leader.close()
        if projector.position != events:
            raise CorrectnessError(f"projected to {projector.position}, log head {events}")

    total = sum(seconds.values())
    say(f"{events / elapsed:,.0f} events/s, batch {args.batch_size}; backend CPU "
        f"{backend_cpu_s / events * 1e6:.1f} µs/event, projector CPU "
        f"{client_cpu_s / events * 1e6:.1f} µs/event")
    statements = []
    for name, spent in seconds.most_common():
        statements.append({"statement": name, "calls": calls[name], "total_s": round(spent, 3),
                           "mean_ms": round(spent / calls[name] * 1000, 3),
                           "share": round(spent / total, 3)})
        say(f"  {spent:7.3f}s {calls[name]:6,} calls {spent / calls[name] * 1000:7.3f} ms "
            f"{spent / total:6.1%}  {name}")
    return {
        "events_per_s": round(events / elapsed, 1),
        "backend_cpu_us_per_event": round(backend_cpu_s / events * 1e6, 1),
        "projector_cpu_us_per_event": round(client_cpu_s / events * 1e6, 1),
        "statement_time_share": round(total / elapsed, 3),
        "statements": statements,
        "events": events, "conversations": args.conversations, "batch_size": args.batch_size,
        "seed": args.seed, "database": database, "server": settings,
        "total_s": round(time.perf_counter() - started, 1),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--conversations", type=int, default=2_000)
    parser.add_argument("--identities", type=int, default=50, help="consumer identities")
    parser.add_argument("--batch-size", type=int, default=70)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if min(args.events, args.conversations, args.identities, args.batch_size) <= 0:
        parser.error("--events, --conversations, --identities and --batch-size must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return report(lambda: asyncio.run(bench(args)))


if __name__ == "__main__":
    sys.exit(main())
