"""Export throughput and memory: the whole log to Parquet (zstd), against a bare COPY of the rows.

    python bench/export.py [--sizes 1000000,3000000] [--page-rows R] [--seed S]
                           [--py-spy DIR]

1. Load: the first size's events (bench/append.py's seeded workload over --conversations
   conversations) are COPYed into `events` by bench/api.py's load_log, positions 1..N and
   log_head N; then VACUUM (ANALYZE) events and CHECKPOINT, so no scan below pays for hint
   bits and no checkpoint of the load runs during a measurement.
2. At each size N, over the whole log (0, N]:
   a. COPY baseline, in this process: one bare asyncpg `copy_from_query` of
      recorder.exports.sql.EVENTS (the exporter's SELECT, with its session settings), format
      csv, output counted and discarded -> copy_events_per_s; the same split into the
      exporter's pages (--page-rows) -> copy_paged_events_per_s.
   b. Export, in a fresh child process (multiprocessing, spawn):
      `Exporter(target).run_adhoc("events", "parquet", "zstd", out)`, the code
      path of `recorder export`, timed from the call to its return (imports and the
      process's start excluded). The child reports its peak RSS (VmHWM) -> peak_rss_mb, its
      RSS before the export started, its RSS sampled at each page (max over the first and
      the second half of the pages), and its CPU time. ratio = events_per_s / copy_events_per_s.
   c. Verify: the manifest (returned, and the one written beside the file) says rows N over
      (0, N] and the sha256 of the file; the Parquet footer holds N rows in the EVENTS
      schema; the position column alone read back is 1..N in order; a few rows (first, last,
      random) equal the database's; the export_runs row is `done` with the same rows and
      sha256. Then the file is removed.
3. Grow the log to the next size (the same workload goes on at position N + 1), VACUUM,
   CHECKPOINT, and repeat 2: the peak RSS should stay flat, since the exporter holds a page
   or two at a time whatever the size of the log.

Database rule as bench/append.py: with RECORDER_DATABASE_URL set, a scratch database
`recorder_bench_<pid>` on that server (created, migrated, dropped); otherwise the embedded
server in a temporary state directory. Files go to a temporary directory, removed at the end.

--py-spy DIR records each export child with py-spy (raw collapsed stacks, all threads, into
DIR/export-<N>.txt); those runs are slower, so their timings are only for the profile.

Human-readable progress goes to stderr; the last line on stdout is one JSON object.
Timings and memory are reported, never asserted: only a correctness failure (a wrong row
count, positions out of order, a hash that does not match, a failed export) exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import inspect
import multiprocessing
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow.compute as pc
import pyarrow.parquet as pq

# bench/ is not a package: reuse append.py's and api.py's workload, database rule and helpers.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from api import load_log
from append import (
    CorrectnessError,
    Workload,
    bench_database,
    report,
    say,
    server_settings,
)
from roles import machine_busy_cpu_s, process_cpu_s

from recorder.db.target import DatabaseTarget
from recorder.exports import sources
from recorder.exports import sql as export_sql
from recorder.exports.columns import EVENTS
from recorder.exports.files import MANIFEST_SUFFIX, read_manifest
from recorder.exports.runner import Exporter

BUDGET_EVENTS_PER_S = 100_000
MB = 1 << 20
DEFAULT_PAGE_ROWS: int = inspect.signature(Exporter).parameters["page_rows"].default


# -- the log -------------------------------------------------------------------------------------


async def vacuum(dsn: str) -> float:
    """Sets the hint bits and the visibility map that COPY left unset, as autovacuum would,
    then checkpoints (where allowed), so no checkpoint of the load runs during a measurement."""
    connection = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        await connection.execute("VACUUM (ANALYZE) events")
        try:
            await connection.execute("CHECKPOINT")
        except asyncpg.InsufficientPrivilegeError:
            say("  (no CHECKPOINT: not allowed for this role)")
    finally:
        await connection.close()
    return time.perf_counter() - started


async def log_stats(dsn: str) -> dict[str, Any]:
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT pg_total_relation_size('events') AS total, pg_relation_size('events') AS heap,"
            " (SELECT avg(octet_length(payload::text)) FROM events TABLESAMPLE SYSTEM (1))"
            " AS payload")
    finally:
        await connection.close()
    return {"table_mb": round(row["total"] / MB, 1), "heap_mb": round(row["heap"] / MB, 1),
            "mean_payload_bytes": round(float(row["payload"] or 0), 1)}


# -- CPU of the server's backends ----------------------------------------------------------------


def backend_cpu_s(pid: int) -> float | None:
    """CPU time so far of a server backend on this machine; None where it cannot be seen
    (a remote server, another pid namespace)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if b"postgres" not in cmdline.read():
                return None
    except OSError:
        return None
    return process_cpu_s(pid)


class BackendWatch:
    """Polls the CPU time of the exporter's backends (its connections' application_name, in
    this database) while an export runs: they are new, so their CPU so far is the export's.
    A backend's last 0.1 s before it exits can be missed."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self.cpu: dict[int, float] = {}
        self.visible = True

    @property
    def total_s(self) -> float | None:
        return sum(self.cpu.values()) if self.visible and self.cpu else None

    async def run(self, stop: asyncio.Event) -> None:
        connection = await asyncpg.connect(self._dsn)
        try:
            while not stop.is_set():
                for row in await connection.fetch(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
                        "AND datname = current_database()",
                        sources.SESSION_SETTINGS["application_name"]):
                    cpu = backend_cpu_s(row["pid"])
                    if cpu is None:
                        self.visible = False
                    else:
                        self.cpu[row["pid"]] = cpu
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1)
        finally:
            await connection.close()


# -- the COPY baseline ---------------------------------------------------------------------------


async def copy_baseline(dsn: str, head: int, page_rows: int) -> dict[str, Any]:
    """The exporter's SELECT as bare COPY ... TO STDOUT (FORMAT csv), output discarded."""
    connection = await asyncpg.connect(dsn, server_settings=sources.SESSION_SETTINGS)
    received = [0]

    async def discard(chunk: bytes) -> None:
        received[0] += len(chunk)

    try:
        pid = connection.get_server_pid()
        server0, client0 = backend_cpu_s(pid), time.process_time()
        busy0, started = machine_busy_cpu_s(), time.perf_counter()
        await connection.copy_from_query(export_sql.EVENTS, 0, head, None, None,
                                         output=discard, format="csv")
        elapsed = time.perf_counter() - started
        busy = machine_busy_cpu_s() - busy0
        client = time.process_time() - client0
        server1 = backend_cpu_s(pid)
        server = None if server0 is None or server1 is None else server1 - server0
        whole_bytes = received[0]
        started = time.perf_counter()
        for low in range(0, head, page_rows):
            await connection.copy_from_query(export_sql.EVENTS, low, min(head, low + page_rows),
                                             None, None, output=discard, format="csv")
        paged_elapsed = time.perf_counter() - started
        if received[0] != 2 * whole_bytes:
            raise CorrectnessError(f"paged COPY gave {received[0] - whole_bytes} bytes, "
                                   f"one COPY {whole_bytes}")
    finally:
        await connection.close()
    return {"elapsed_s": elapsed, "csv_bytes": whole_bytes, "machine_busy_cpu_s": busy,
            "server_cpu_s": server, "client_cpu_s": client, "paged_elapsed_s": paged_elapsed}


# -- the export, in a child process --------------------------------------------------------------


def rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def export_child(pipe: Connection, target: DatabaseTarget, out: str,
                 page_rows: int) -> None:
    """Runs one export; sends ("ready", rss) first, waits for "go", then sends the result."""
    try:
        samples: list[int] = []

        def progress(done: int, total: int) -> None:
            samples.append(rss_kb())

        exporter = Exporter(target, page_rows=page_rows)
        pipe.send(("ready", rss_kb()))
        pipe.recv()
        before_kb = rss_kb()
        cpu0, started = time.process_time(), time.perf_counter()
        manifest = asyncio.run(exporter.run_adhoc("events", "parquet", "zstd",
                                                  Path(out), progress=progress))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        half = len(samples) // 2
        pipe.send({
            "manifest": manifest,
            "elapsed_s": elapsed,
            "cpu_s": cpu,
            "rss_before_kb": before_kb,
            "vm_hwm_kb": rss_kb("VmHWM"),
            "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "rss_first_half_max_kb": max(samples[:half], default=0),
            "rss_second_half_max_kb": max(samples[half:], default=0),
            "pages": len(samples),
        })
    except BaseException as exc:  # reported to the parent, which decides
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        pipe.close()


def receive(pipe: Connection, process: multiprocessing.process.BaseProcess) -> Any:
    try:
        return pipe.recv()
    except EOFError:
        process.join(10)
        raise CorrectnessError(f"the export child died (exit code {process.exitcode})") from None


async def run_export_child(target: DatabaseTarget, out: Path, page_rows: int,
                           profile: Path | None, py_spy: str | None = None) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=export_child, args=(child, target, str(out), page_rows),
                          daemon=True)
    loop = asyncio.get_running_loop()
    spy: asyncio.subprocess.Process | None = None
    try:
        process.start()
        child.close()
        message = await loop.run_in_executor(None, receive, parent, process)
        if isinstance(message, dict):  # failed before it was ready
            raise CorrectnessError(f"export child failed: {message.get('error')}")
        if profile is not None and py_spy is not None:
            spy = await asyncio.create_subprocess_exec(
                py_spy, "record", "--pid",
                str(process.pid), "--format", "raw", "--threads", "--rate", "100",
                "--output", str(profile),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            await asyncio.sleep(1.0)  # attached before the clock starts
        watch, stop = BackendWatch(target.dsn), asyncio.Event()
        watching = asyncio.create_task(watch.run(stop))
        await asyncio.sleep(0.2)  # its connection is open
        busy0 = machine_busy_cpu_s()
        parent.send("go")
        try:
            result: dict[str, Any] = await loop.run_in_executor(None, receive, parent,
                                                                process)
        finally:
            stop.set()
            await asyncio.gather(watching, return_exceptions=True)
        result["machine_busy_cpu_s"] = machine_busy_cpu_s() - busy0
        result["server_cpu_s"] = watch.total_s
        await loop.run_in_executor(None, process.join, 30)
    finally:
        if process.is_alive():
            process.terminate()
            await loop.run_in_executor(None, process.join, 10)
        parent.close()
        if spy is not None:
            await asyncio.wait_for(spy.wait(), 30)
    if "error" in result:
        raise CorrectnessError(f"export child failed: {result['error']}")
    return result


# -- verification --------------------------------------------------------------------------------


def file_sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while block := handle.read(8 * MB):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


async def verify(dsn: str, out: Path, head: int, manifest: dict[str, Any],
                 rng: random.Random) -> int:
    """Raises CorrectnessError unless the file is the whole log; its row groups."""
    def fail(what: str) -> None:
        raise CorrectnessError(f"export of {head:,} events: {what}")

    if (manifest.get("rows"), manifest.get("from_position"), manifest.get("to_position")) != (
            head, 0, head):
        fail(f"manifest says rows={manifest.get('rows')} over "
             f"({manifest.get('from_position')}, {manifest.get('to_position')}]")
    on_disk = read_manifest(out.with_name(out.name + MANIFEST_SUFFIX))
    if on_disk is None or on_disk.get("sha256") != manifest.get("sha256"):
        fail("the manifest beside the file is missing or names another sha256")
    digest, size = await asyncio.to_thread(file_sha256, out)
    if digest != manifest.get("sha256") or size != manifest.get("bytes"):
        fail(f"file sha256 {digest} / {size} bytes, manifest "
             f"{manifest.get('sha256')} / {manifest.get('bytes')} bytes")

    parquet = pq.ParquetFile(out)
    if parquet.metadata.num_rows != head:
        fail(f"the Parquet footer holds {parquet.metadata.num_rows:,} rows")
    if not parquet.schema_arrow.remove_metadata().equals(EVENTS.schema):
        fail(f"schema {parquet.schema_arrow} is not the EVENTS schema")
    positions = (await asyncio.to_thread(pq.read_table, out, columns=["position"])).column(
        "position").combine_chunks()
    if positions.null_count or len(positions) != head or positions[0].as_py() != 1:
        fail(f"position column: {len(positions):,} values, {positions.null_count} nulls, "
             f"first {positions[0].as_py() if len(positions) else None}")
    steps = pc.pairwise_diff(positions).slice(1)
    if head > 1 and pc.min_max(steps).as_py() != {"min": 1, "max": 1}:
        fail(f"positions are not 1..N in order: steps {pc.min_max(steps).as_py()}")

    # A few rows, whole, against the database.
    starts, offset = [], 0
    for group in range(parquet.metadata.num_row_groups):
        starts.append(offset)
        offset += parquet.metadata.row_group(group).num_rows
    wanted = sorted({1, head, *(rng.randint(1, head) for _ in range(3))})
    connection = await asyncpg.connect(dsn, server_settings=sources.SESSION_SETTINGS)
    try:
        for position in wanted:
            group = max(g for g, start in enumerate(starts) if start < position)
            table = parquet.read_row_group(group)
            row = table.slice(position - 1 - starts[group], 1).to_pylist()[0]
            db = await connection.fetchrow(
                "SELECT position, received_at, account_id, conversation_id, dialog_id, "
                "sequence, server_ts, payload::text AS payload FROM events WHERE position = $1",
                position)
            expected = dict(db.items())
            mismatched = [name for name, value in expected.items() if row[name] != value]
            if mismatched:
                fail(f"row at position {position} differs from the database in {mismatched}")
        run = await connection.fetchrow(
            "SELECT status, rows, sha256 FROM export_runs WHERE id = $1", manifest["run_id"])
    finally:
        await connection.close()
    if run is None or (run["status"], run["rows"], run["sha256"]) != (
            "done", head, manifest["sha256"]):
        fail(f"export_runs row {manifest['run_id']}: {dict(run) if run else None}")
    return int(parquet.metadata.num_row_groups)


# -- main ----------------------------------------------------------------------------------------


def label(events: int) -> str:
    if events % 1_000_000 == 0:
        return f"{events // 1_000_000}m"
    if events % 1_000 == 0:
        return f"{events // 1_000}k"
    return str(events)


def cpu_text(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds:.1f}"


def other_cpu_s(figures: dict[str, Any], client_cpu_s: float) -> float | None:
    """Machine busy CPU beside the client's and its backends': other work on the machine (the
    server's background processes, the kernel, and anything else running: timings are noisy
    when this is large)."""
    if figures["server_cpu_s"] is None:
        return None
    return float(figures["machine_busy_cpu_s"] - figures["server_cpu_s"] - client_cpu_s)


def other_text(figures: dict[str, Any], client_cpu_s: float) -> str:
    other = other_cpu_s(figures, client_cpu_s)
    return "" if other is None else f", other {other:.1f}"


def rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 2)


async def measure(target: DatabaseTarget, head: int, work: Path, args: argparse.Namespace,
                  rng: random.Random) -> dict[str, Any]:
    say(f"  COPY baseline: one copy_from_query of the exporter's SELECT over (0, {head:,}], "
        f"then in pages of {args.page_rows:,}")
    copy = await copy_baseline(target.dsn, head, args.page_rows)
    copy_rate = head / copy["elapsed_s"]
    say(f"    {copy_rate:,.0f} events/s ({copy['elapsed_s']:.2f}s, "
        f"{copy['csv_bytes'] / MB:,.0f} MB of CSV); CPU-s: server backend "
        f"{cpu_text(copy['server_cpu_s'])}, client {copy['client_cpu_s']:.1f}, machine busy "
        f"{copy['machine_busy_cpu_s']:.1f}{other_text(copy, copy['client_cpu_s'])}; "
        f"paged {head / copy['paged_elapsed_s']:,.0f} events/s")

    out = work / f"events-{head}.parquet"
    say(f"  export: run_adhoc('events', 'parquet', 'zstd') -> {out.name}, in a child process")
    child = await run_export_child(target, out, args.page_rows, None)
    rate = head / child["elapsed_s"]
    manifest = child["manifest"]
    peak_mb = child["vm_hwm_kb"] / 1024
    say(f"    {rate:,.0f} events/s ({child['elapsed_s']:.2f}s; {manifest['bytes'] / MB:,.1f} MB "
        f"file); CPU-s: server backends {cpu_text(child['server_cpu_s'])}, export process "
        f"{child['cpu_s']:.1f}, machine busy {child['machine_busy_cpu_s']:.1f}"
        f"{other_text(child, child['cpu_s'])}")
    say(f"    child RSS: {child['rss_before_kb'] / 1024:.0f} MB before, peak {peak_mb:.0f} MB; "
        f"max over the first/second half of {child['pages']} pages "
        f"{child['rss_first_half_max_kb'] / 1024:.0f}/{child['rss_second_half_max_kb'] / 1024:.0f}"
        " MB")

    started = time.perf_counter()
    row_groups = await verify(target.dsn, out, head, manifest, rng)
    say(f"  verified in {time.perf_counter() - started:.1f}s: {head:,} rows, positions 1..N in "
        "order, sha256 = manifest, sample rows = database, export_runs done")
    out.unlink()
    out.with_name(out.name + MANIFEST_SUFFIX).unlink()

    if args.py_spy is not None:
        profile = args.py_spy / f"export-{head}.txt"
        say(f"  profiling a second export with py-spy -> {profile}")
        spied = await run_export_child(target, out, args.page_rows, profile, args.py_spy_bin)
        say(f"    {head / spied['elapsed_s']:,.0f} events/s under py-spy")
        out.unlink()
        out.with_name(out.name + MANIFEST_SUFFIX).unlink()

    return {
        "events": head,
        "events_per_s": round(rate, 1),
        "copy_events_per_s": round(copy_rate, 1),
        "ratio": round(rate / copy_rate, 3),
        "peak_rss_mb": round(peak_mb, 1),
        "rss_before_export_mb": round(child["rss_before_kb"] / 1024, 1),
        "rss_first_half_max_mb": round(child["rss_first_half_max_kb"] / 1024, 1),
        "rss_second_half_max_mb": round(child["rss_second_half_max_kb"] / 1024, 1),
        "file_mb": round(manifest["bytes"] / MB, 1),
        "row_groups": row_groups,
        "export_s": round(child["elapsed_s"], 3),
        "export_child_cpu_s": round(child["cpu_s"], 2),
        "export_server_cpu_s": rounded(child["server_cpu_s"]),
        "export_machine_busy_cpu_s": round(child["machine_busy_cpu_s"], 2),
        "export_other_cpu_s": rounded(other_cpu_s(child, child["cpu_s"])),
        "copy_s": round(copy["elapsed_s"], 3),
        "copy_csv_mb": round(copy["csv_bytes"] / MB, 1),
        "copy_server_cpu_s": rounded(copy["server_cpu_s"]),
        "copy_client_cpu_s": round(copy["client_cpu_s"], 2),
        "copy_machine_busy_cpu_s": round(copy["machine_busy_cpu_s"], 2),
        "copy_other_cpu_s": rounded(other_cpu_s(copy, copy["client_cpu_s"])),
        "copy_paged_events_per_s": round(head / copy["paged_elapsed_s"], 1),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    rng = random.Random(args.seed)
    workload = Workload(args.seed, args.conversations, args.identities)
    work = Path(tempfile.mkdtemp(prefix="recorder-bench-export-"))
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    try:
        async with bench_database() as (target, database):
            settings = await server_settings(target.dsn)
            say(f"server {settings}")
            head = 0
            for size in args.sizes:
                say(f"phase {label(size)}: grow the log {head:,} -> {size:,} events by COPY "
                    f"({args.copy_chunk:,} per COPY)")
                if head == 0:
                    load_s = await load_log(target.dsn, workload, size, args.copy_chunk)
                else:
                    load_s = await load_log(target.dsn, workload, size, args.copy_chunk, head=head)
                vacuum_s = await vacuum(target.dsn)
                stats = await log_stats(target.dsn)
                say(f"  {load_s:.1f}s ({(size - head) / load_s:,.0f} events/s), VACUUM "
                    f"{vacuum_s:.1f}s; events table {stats['table_mb']:,.0f} MB, mean payload "
                    f"{stats['mean_payload_bytes']:.0f} bytes")
                head = size
                run = await measure(target, head, work, args, rng)
                run.update(load_s=round(load_s, 1), vacuum_s=round(vacuum_s, 1), **stats)
                runs.append(run)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    first, last = runs[0], runs[-1]
    summary: dict[str, Any] = {
        "runs": runs,
        "events": first["events"],
        "events_per_s": first["events_per_s"],
        "copy_events_per_s": first["copy_events_per_s"],
        "ratio": first["ratio"],
        "peak_rss_mb": first["peak_rss_mb"],
        "file_mb": first["file_mb"],
    }
    for run in runs[1:]:
        suffix = label(run["events"])
        summary.update({f"events_per_s_{suffix}": run["events_per_s"],
                        f"copy_events_per_s_{suffix}": run["copy_events_per_s"],
                        f"ratio_{suffix}": run["ratio"],
                        f"peak_rss_mb_{suffix}": run["peak_rss_mb"],
                        f"file_mb_{suffix}": run["file_mb"]})
    within = all(run["events_per_s"] >= BUDGET_EVENTS_PER_S for run in runs)
    total_s = time.perf_counter() - started
    summary.update({
        "peak_rss_growth_mb": round(last["peak_rss_mb"] - first["peak_rss_mb"], 1),
        "budget_events_per_s": BUDGET_EVENTS_PER_S,
        "within_budget": within,
        "page_rows": args.page_rows,
        "conversations": args.conversations,
        "seed": args.seed,
        "database": database,
        "server": settings,
        "total_s": round(total_s, 1),
    })
    for run in runs:
        say(f"{run['events']:>12,} events: export {run['events_per_s']:,.0f}/s, COPY "
            f"{run['copy_events_per_s']:,.0f}/s (ratio {run['ratio']:.2f}), peak RSS "
            f"{run['peak_rss_mb']:.0f} MB, file {run['file_mb']:,.0f} MB")
    say(f"total {total_s:.0f}s; within budget (>= {BUDGET_EVENTS_PER_S:,} events/s): {within}")
    return summary


def parse_sizes(text: str) -> list[int]:
    sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    if not sizes or any(b <= a for a, b in zip([0, *sizes], sizes, strict=False)):
        raise argparse.ArgumentTypeError(
            "sizes must be positive and increasing, e.g. 1000000,3000000")
    return sizes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=[1_000_000, 3_000_000],
                        help="log sizes to export at, increasing (default 1000000,3000000)")
    parser.add_argument("--conversations", type=int, default=50_000)
    parser.add_argument("--identities", type=int, default=4, help="consumer identities")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--copy-chunk", type=int, default=20_000)
    parser.add_argument("--page-rows", type=int, default=DEFAULT_PAGE_ROWS,
                        help="the Exporter's page_rows (default: the Exporter's own, "
                             f"{DEFAULT_PAGE_ROWS:,})")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                        help="also record each export with py-spy into DIR (a second export)")
    args = parser.parse_args(argv)
    if min(args.conversations, args.copy_chunk, args.page_rows) <= 0:
        parser.error("--conversations, --copy-chunk and --page-rows must be positive")
    args.py_spy_bin = None
    if args.py_spy is not None:
        beside = Path(sys.executable).with_name("py-spy")
        args.py_spy_bin = shutil.which("py-spy") or (str(beside) if beside.exists() else None)
        if args.py_spy_bin is None:
            parser.error("--py-spy: no py-spy on PATH nor beside the interpreter "
                         "(pip install py-spy)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return report(lambda: asyncio.run(bench(args)))


if __name__ == "__main__":
    sys.exit(main())
