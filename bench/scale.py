"""Many instances, one log: how the write rate, memory and takeover behave with 1, 2 and 3.

    python bench/scale.py [--phases writers,instances] [--writers 1,2,3] [--events N]
                          [--instances 1,2,3] [--identities I] [--rate R] [--seconds S]
                          [--lease-ttl-s T] [--soak-minutes M]

Phases (each in a fresh scratch database, by bench/append.py's database rule):

1. writers: W writer processes (W in --writers), each an `EventWriter` without the advisory
   lock, as every `recorder run` instance now writes, append disjoint thirds of N events
   (bench/append.py's workload) as fast as they can into one log. Aggregate events/s =
   N / (last commit - first put), and the ratio to one writer in the same run; the log is
   then checked: positions 1..N contiguous, N rows, no key twice.
2. instances: K real `recorder run` processes (K in --instances; RECORDER_INSTANCE s0..,
   RECORDER_LEASE_TTL_S T) share I identities of the simulator (served by this process;
   traffic of R events/s over the identities' conversations). Figures: seconds from the
   start until every identity is connected (from each instance's /metrics), events/s recorded
   over S seconds, RSS of the ingest processes per identity held and per followed dialog, and
   with K > 1 the takeover: `kill -9` of one instance, seconds until every identity is
   connected again on the others.
3. soak (--soak-minutes M > 0, off by default): one instance recording R events/s for M
   minutes with conversations opening and closing; its ingest RSS after 5 minutes and at the
   end (issue 15: within 10 %). Closed conversations stay followed for the grace window
   (--closed-grace-s, RECORDER_CLOSED_GRACE_S, default an hour), so memory is flat only once
   the soak is longer than it.

Human-readable progress goes to stderr; the last stdout line is one JSON object. Timings are
reported, never asserted; a log that is not exact exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from append import CorrectnessError, Workload, bench_database, report, say, server_settings
from roles import free_ports, rss_kib

from recorder.db.target import DatabaseTarget
from recorder.eventlog.records import EventRecord
from recorder.eventlog.writer import EventWriter
from recorder.simulator import Simulator

ACCOUNT = "71234567"


# -- phase 1: writers ----------------------------------------------------------------------------


def writer_process(dsn: str, seed: int, conversations: int, count: int,
                   start_at: float, results: Any) -> None:
    """One writer in a process of its own: put `count` events, commit, report timings."""
    records = Workload(seed, conversations, 4).events(count)
    results.put(asyncio.run(_write(dsn, records, start_at)))


async def _write(dsn: str, records: list[EventRecord], start_at: float) -> tuple[float, float, int]:
    writer = EventWriter(DatabaseTarget(dsn=dsn, embedded=False), lock_key=None)
    done = asyncio.Event()

    def committed(_: object) -> None:
        if writer.stats.stored + writer.stats.duplicates >= len(records):
            done.set()

    writer.add_listener(committed)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    await asyncio.sleep(max(0.0, start_at - time.time()))
    began = time.time()
    for record in records:
        await writer.put(record)
    await done.wait()
    ended = time.time()
    stop.set()
    await task
    return began, ended, writer.stats.stored


async def phase_writers(args: argparse.Namespace) -> dict[str, Any]:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    figures: dict[str, Any] = {}
    for writers in args.writers:
        async with bench_database() as (target, _):
            share = args.events // writers
            results = context.Queue()
            start_at = time.time() + 3.0  # every process imported and connected by then
            processes = [
                context.Process(target=writer_process, args=(
                    target.dsn, args.seed + n, 2000, share, start_at, results))
                for n in range(writers)
            ]
            for process in processes:
                process.start()
            loop = asyncio.get_running_loop()
            timings = [await loop.run_in_executor(None, results.get, True, 600)
                       for _ in processes]
            for process in processes:
                process.join(30)
            stored = sum(t[2] for t in timings)
            elapsed = max(t[1] for t in timings) - min(t[0] for t in timings)
            await check_log(target.dsn, stored)
        rate = stored / elapsed
        figures[str(writers)] = {"events": stored, "elapsed_s": round(elapsed, 3),
                                 "events_per_s": round(rate, 1)}
        say(f"writers {writers}: {stored:,} events in {elapsed:.2f}s = {rate:,.0f} events/s")
    one = figures.get("1", {}).get("events_per_s")
    for value in figures.values():
        value["ratio_to_one"] = round(value["events_per_s"] / one, 3) if one else None
    return figures


async def check_log(dsn: str, expected: int) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT count(*) AS n, min(position) AS low, max(position) AS high, "
            "count(DISTINCT dedupe_key) AS keys FROM events")
        head = await connection.fetchval("SELECT position FROM log_head WHERE id = 1")
    finally:
        await connection.close()
    if (row["n"], row["low"], row["high"], row["keys"], head) != (
            expected, 1, expected, expected, expected):
        raise CorrectnessError(f"log not exact after the writers: {dict(row)}, head {head}, "
                               f"expected {expected} contiguous rows")


# -- phase 2: instances --------------------------------------------------------------------------


class Instance:
    """`python -m recorder run` with its own name, state directory and API port."""

    def __init__(self, name: str, dsn: str, config: Path, ums_url: str, ttl_s: float,
                 directory: Path, port: int, closed_grace_s: float = 3600.0) -> None:
        self.name = name
        self.port = port
        directory.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
        self.env.update({
            "RECORDER_DATABASE_URL": dsn, "RECORDER_ACCOUNT": ACCOUNT,
            "RECORDER_UMS_URL": ums_url, "RECORDER_CONFIG": str(config),
            "RECORDER_INSTANCE": name, "RECORDER_LEASE_TTL_S": str(ttl_s),
            "RECORDER_STATE_DIR": str(directory / "state"),
            "RECORDER_API_LISTEN": f"127.0.0.1:{port}", "RECORDER_LOG_LEVEL": "warning",
            "RECORDER_CLOSED_GRACE_S": str(closed_grace_s),
        })
        self.log = (directory / "daemon.log").open("ab")
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "recorder", "run", env=self.env,
            stdout=self.log, stderr=asyncio.subprocess.STDOUT)

    async def metrics(self, http: aiohttp.ClientSession) -> dict[tuple[str, str], float]:
        found: dict[tuple[str, str], float] = {}
        try:
            async with http.get(f"http://127.0.0.1:{self.port}/metrics") as answer:
                text = await answer.text()
        except aiohttp.ClientError:
            return found
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name_labels, value = line.rsplit(" ", 1)
                name, _, labels = name_labels.partition("{")
                found[(name, labels.rstrip("}"))] = float(value)
        return found

    def ingest_pids(self) -> list[int]:
        assert self.process is not None
        return [pid for pid in _children(self.process.pid)
                if b"RECORDER_RUN_ROLE=ingest" in Path(f"/proc/{pid}/environ").read_bytes()]

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 120)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self.log.close()


def _children(pid: int) -> list[int]:
    try:
        found = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return found + [g for c in found for g in _children(c)]


async def connected(http: aiohttp.ClientSession, instances: Sequence[Instance]) -> tuple[int, int]:
    """(identities connected, dialogs followed) over the instances' /metrics."""
    identities = dialogs = 0
    for instance in instances:
        found = await instance.metrics(http)
        identities += int(sum(v for (n, _), v in found.items()
                              if n == "recorder_identity_connected"))
        dialogs += int(sum(v for (n, _), v in found.items()
                           if n == "recorder_identity_followed_dialogs"))
    return identities, dialogs


async def wait_connected(http: aiohttp.ClientSession, instances: Sequence[Instance],
                         identities: int, within_s: float) -> float:
    began = time.monotonic()
    while (await connected(http, instances))[0] < identities:
        if time.monotonic() - began > within_s:
            raise CorrectnessError(f"not every identity connected within {within_s:.0f}s: "
                                   f"{(await connected(http, instances))[0]}/{identities}")
        await asyncio.sleep(0.5)
    return time.monotonic() - began


async def log_head(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT position FROM log_head WHERE id = 1"))
    finally:
        await connection.close()


async def phase_instances(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for count in args.instances:
        async with bench_database() as (target, _), Simulator(
                account=ACCOUNT, seed=args.seed, auto_reply=True) as sim:
            figures[str(count)] = await run_instances(args, target, sim, count)
    return figures


async def run_instances(args: argparse.Namespace, target: DatabaseTarget, sim: Simulator,
                        count: int) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="recorder-scale-"))
    consumers = [sim.new_consumer() for _ in range(args.identities)]
    config = directory / "recorder.toml"
    config.write_text("".join(f'[[consumers]]\nname = "c{n}"\njwt = "{sim.token_for(sub)}"\n\n'
                              for n, sub in enumerate(consumers)), encoding="utf-8")
    ports = free_ports(count)
    instances = [Instance(f"s{n}", target.dsn, config, sim.ws_url, args.lease_ttl_s,
                          directory / f"s{n}", ports[n]) for n in range(count)]
    result: dict[str, Any] = {"identities": args.identities}
    async with aiohttp.ClientSession() as http:
        try:
            for instance in instances:
                await instance.start()
            result["all_connected_s"] = round(await wait_connected(
                http, instances, args.identities, args.connect_within_s), 1)
            say(f"{count} instance(s): {args.identities:,} identities connected after "
                f"{result['all_connected_s']}s")
            traffic = sim.start_traffic(consumers, 1, rate=args.rate,
                                        duration_s=args.seconds + 5)
            await asyncio.sleep(2)
            head = await log_head(target.dsn)
            await asyncio.sleep(args.seconds)
            recorded = await log_head(target.dsn) - head
            result["events_per_s"] = round(recorded / args.seconds, 1)
            _, dialogs = await connected(http, instances)
            rss = sum(rss_kib(pid) for i in instances for pid in i.ingest_pids()) / 1024
            result["ingest_rss_mb"] = round(rss, 1)
            result["rss_kib_per_identity"] = round(rss * 1024 / args.identities, 1)
            result["followed_dialogs"] = dialogs
            result["rss_kib_per_followed_dialog"] = round(rss * 1024 / dialogs, 1) \
                if dialogs else None
            say(f"  {result['events_per_s']:,.0f} events/s recorded (offered {args.rate:,.0f}); "
                f"ingest RSS {rss:.0f} MB = {result['rss_kib_per_identity']} KiB per identity")
            if count > 1:
                victim, survivors = instances[0], instances[1:]
                victim.kill()
                killed = time.monotonic()
                await wait_connected(http, survivors, args.identities,
                                     args.lease_ttl_s * 3 + args.connect_within_s)
                result["takeover_s"] = round(time.monotonic() - killed, 1)
                say(f"  kill -9 of {victim.name}: every identity connected again after "
                    f"{result['takeover_s']}s (lease TTL {args.lease_ttl_s:g}s)")
            traffic.cancel()
        finally:
            for instance in instances:
                await instance.stop()
    return result


# -- phase 3: soak -------------------------------------------------------------------------------


async def phase_soak(args: argparse.Namespace) -> dict[str, Any]:
    async with bench_database() as (target, _), Simulator(
            account=ACCOUNT, seed=args.seed, auto_reply=True) as sim:
        directory = Path(tempfile.mkdtemp(prefix="recorder-soak-"))
        consumers = [sim.new_consumer() for _ in range(args.soak_identities)]
        config = directory / "recorder.toml"
        config.write_text("".join(
            f'[[consumers]]\nname = "c{n}"\njwt = "{sim.token_for(sub)}"\n\n'
            for n, sub in enumerate(consumers)), encoding="utf-8")
        instance = Instance("soak", target.dsn, config, sim.ws_url, args.lease_ttl_s,
                            directory / "soak", free_ports(1)[0], args.closed_grace_s)
        samples: list[tuple[float, float]] = []
        try:
            await instance.start()
            async with aiohttp.ClientSession() as http:
                await wait_connected(http, [instance], len(consumers), args.connect_within_s)
            traffic = sim.start_traffic(consumers, 4, rate=args.rate)
            began = time.monotonic()
            while time.monotonic() - began < args.soak_minutes * 60:
                await asyncio.sleep(30)
                rss = sum(rss_kib(pid) for pid in instance.ingest_pids()) / 1024
                samples.append((round((time.monotonic() - began) / 60, 1), round(rss, 1)))
                say(f"  soak {samples[-1][0]} min: ingest RSS {rss:.1f} MB")
            traffic.cancel()
        finally:
            await instance.stop()
    at_five = next((rss for minute, rss in samples if minute >= 5), None)
    end = samples[-1][1] if samples else None
    return {"minutes": args.soak_minutes, "rss_mb": samples, "rss_mb_after_5_min": at_five,
            "rss_mb_at_end": end,
            "growth_after_5_min": round(end / at_five - 1, 3) if at_five and end else None}


# -- main ----------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {}
    async with bench_database() as (target, database):
        result["server"] = await server_settings(target.dsn)
        result["database"] = database
    if "writers" in args.phases:
        say(f"phase writers: {args.events:,} events split over {args.writers} writers")
        result["writers"] = await phase_writers(args)
    if "instances" in args.phases:
        say(f"phase instances: {args.identities:,} identities on {args.instances} instances")
        result["instances"] = await phase_instances(args)
    if args.soak_minutes > 0:
        say(f"phase soak: {args.soak_minutes} minutes at {args.rate:,.0f} events/s")
        result["soak"] = await phase_soak(args)
    result["settings"] = {k: v for k, v in vars(args).items()}
    result["total_s"] = round(time.perf_counter() - started, 1)
    return result


def counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", type=lambda t: t.split(","), default=["writers", "instances"])
    parser.add_argument("--writers", type=counts, default=[1, 2, 3])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--instances", type=counts, default=[1, 2, 3])
    parser.add_argument("--identities", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=500.0, help="offered events/s")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--lease-ttl-s", type=float, default=15.0)
    parser.add_argument("--connect-within-s", type=float, default=300.0)
    parser.add_argument("--soak-minutes", type=float, default=0.0)
    parser.add_argument("--soak-identities", type=int, default=50)
    parser.add_argument("--closed-grace-s", type=float, default=3600.0,
                        help="RECORDER_CLOSED_GRACE_S of the soak's instance")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.events <= 0 or args.identities <= 0:
        parser.error("--events and --identities must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return report(lambda: asyncio.run(bench(args)))


if __name__ == "__main__":
    sys.exit(main())
