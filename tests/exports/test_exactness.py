"""Exports are exact: every position once, across crashes, failures, instances and retention.

Crashes are real: tests/exports/crash_export.py runs a job in a child process that leaves by
`os._exit` at a named step (no cleanup, no unlock, no `failed` mark). After each fault the
job runs again here, and the directory and export_runs are checked against the log: the
files that have a manifest hold every position 1..head exactly once, in windows contiguous
from 0, one file per window, no temporary file left, no data file without a manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import itertools
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from recorder.db.target import DatabaseTarget
from recorder.errors import ConfigError
from recorder.eventlog import sql as log_sql
from recorder.eventlog.writer import EventWriter
from recorder.exports.files import (
    MANIFEST_SUFFIX,
    TEMP_SUFFIX,
    apply_retention,
    read_manifest,
    write_json_atomically,
)
from recorder.exports.jobs import DEFAULT_COMPRESSION, ExportJob
from recorder.exports.runner import Exporter, ExportError, JobBusyError
from recorder.exports.scheduler import ExportScheduler
from tests.exports.crash_export import CRASHED, MID_WRITE
from tests.helpers import message_event, wait_until
from tests.projection_helpers import append_changes, content, project, upsert

ROOT = Path(__file__).resolve().parents[2]
DONE_RUNS = """
SELECT id, kind, format, from_position, to_position, path, rows, sha256, scheduled_for
FROM export_runs WHERE job = $1 AND status = 'done' ORDER BY from_position
"""
RUNS = "SELECT * FROM export_runs WHERE job = $1 ORDER BY id"


# -- helpers ---------------------------------------------------------------------------------


def make_job(directory: Path, *, name: str = "ev", kind: str = "events", fmt: str = "parquet",
             schedule: str = "1h", retention_days: float | None = None) -> ExportJob:
    return ExportJob(name, schedule, kind, fmt, directory, DEFAULT_COMPRESSION[fmt],
                     retention_days)


async def add_events(database: DatabaseTarget, count: int, *, start: int = 0,
                     conversations: int = 3) -> int:
    """`count` messages spread over a few conversations (sequences from `start`); the head."""
    return await append_changes(database, [
        content(f"conv-{(start + n) % conversations}", start + n) for n in range(count)
    ])


async def run_when_free(exporter: Exporter, job: ExportJob, **options: Any,
                        ) -> list[dict[str, Any]]:
    """run_job, waiting while a crashed child's session (and its lock) is still going away."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return await exporter.run_job(job, **options)
        except JobBusyError:
            assert time.monotonic() < deadline, "the job's lock was never released"
            await asyncio.sleep(0.05)


async def crash_export(database: DatabaseTarget, job: ExportJob, crash_at: str,
                       *, page_rows: int = 20_000) -> int:
    """Run the job in a child process that crashes at `crash_at`; its exit status."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.exports.crash_export", "--dsn", database.dsn,
        "--directory", str(job.directory), "--job", job.name, "--kind", job.kind,
        "--format", job.format, "--compression", job.compression, "--crash-at", crash_at,
        "--page-rows", str(page_rows), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=60)
    assert child.returncode == CRASHED, (child.returncode, out.decode(), err.decode())
    return child.returncode


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A data file's rows, whatever its format and compression."""
    if path.name.endswith(".parquet"):
        return list(pq.read_table(path).to_pylist())
    if ".csv" in path.name:
        return list(pcsv.read_csv(path).to_pylist())  # .gz/.zst: decompressed by suffix
    with pa.input_stream(str(path)) as stream:  # compression detected by suffix
        data = stream.read()
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def listing(directory: Path) -> dict[str, set[str]]:
    """The directory's names by role: data files, manifests, temporary files (recursive)."""
    found: dict[str, set[str]] = {"data": set(), "manifests": set(), "temps": set()}
    for path in directory.rglob("*"):
        if path.is_dir():
            continue
        name = str(path.relative_to(directory))
        if path.name.endswith(TEMP_SUFFIX):
            found["temps"].add(name)
        elif path.name.endswith(MANIFEST_SUFFIX):
            found["manifests"].add(name)
        else:
            found["data"].add(name)
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def assert_exactly_once(db: asyncpg.Connection, job: ExportJob, head: int,
                              ) -> list[dict[str, Any]]:
    """Files and export_runs of an events job hold positions 1..head exactly once; the
    manifests, in window order."""
    directory = job.directory
    names = listing(directory)
    assert not names["temps"], f"temporary files left: {names['temps']}"
    manifests = sorted((read_manifest(directory / name) or {} for name in names["manifests"]),
                       key=lambda m: int(m["from_position"]))
    assert {m["file"] for m in manifests} == names["data"], "a data file without a manifest"
    runs = await db.fetch(DONE_RUNS, job.name)
    windows = [(r["from_position"], r["to_position"]) for r in runs]
    assert windows, "no done run"
    assert windows[0][0] == 0 and windows[-1][1] == head, windows
    assert all(low < high for low, high in windows), windows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows)), windows
    assert [(m["from_position"], m["to_position"]) for m in manifests] == windows
    assert [Path(r["path"]).name for r in runs] == [m["file"] for m in manifests]

    truth = {r["position"]: (r["conversation_id"], r["sequence"]) for r in await db.fetch(
        "SELECT position, conversation_id, sequence FROM events ORDER BY position")}
    positions: list[int] = []
    for manifest, run in zip(manifests, runs, strict=True):
        low, high = manifest["from_position"], manifest["to_position"]
        path = directory / manifest["file"]
        assert manifest["file"] == f"{job.name}-{low + 1:012d}-{high:012d}{job.suffix}"
        assert (manifest["job"], manifest["kind"], manifest["format"]) == (
            job.name, job.kind, job.format)
        rows = read_rows(path)
        got = [row["position"] for row in rows]
        assert got == list(range(low + 1, high + 1)), (manifest["file"], got)
        assert [(row["conversation_id"], row["sequence"]) for row in rows] == [
            truth[p] for p in got]
        assert manifest["rows"] == run["rows"] == len(rows)
        assert manifest["sha256"] == run["sha256"] == sha256(path)
        assert manifest["bytes"] == path.stat().st_size
        positions += got
    assert positions == list(range(1, head + 1))
    return manifests


@contextlib.asynccontextmanager
async def event_feed(database: DatabaseTarget, *, every_s: float = 0.02,
                     ) -> AsyncIterator[EventWriter]:
    """Messages appended through a running writer until the block ends; yields the writer."""
    writer = EventWriter(database, batch_wait_ms=0.5)
    stop = asyncio.Event()
    writing = asyncio.create_task(writer.run(stop))

    async def feed() -> None:
        sequence = 0
        while True:
            for _ in range(5):
                await writer.put(message_event(f"live-{sequence % 4}", sequence))
                sequence += 1
            await asyncio.sleep(every_s)

    feeding = asyncio.create_task(feed())
    try:
        yield writer
    finally:
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeding
        stop.set()
        await writing


# -- 1. real crashes -------------------------------------------------------------------------


@pytest.mark.parametrize(("crash_at", "fmt"), [
    (MID_WRITE, "parquet"), ("file-renamed", "jsonl"), ("manifest-written", "csv"),
    ("checkpointed", "parquet"),
])
async def test_a_crashed_run_is_redone_under_the_same_name(
        database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path, crash_at: str,
        fmt: str) -> None:
    job = make_job(tmp_path / "out", fmt=fmt)
    first = await add_events(database, 30)
    assert [m["to_position"] for m in await Exporter(database).run_job(job)] == [first]
    head = await add_events(database, 40, start=30)

    await crash_export(database, job, crash_at, page_rows=7)
    base = f"{job.name}-{first + 1:012d}-{head:012d}"
    data, manifest, temp = base + job.suffix, base + MANIFEST_SUFFIX, f".{base}{job.suffix}.tmp"
    names = listing(job.directory)
    new = (names["data"] | names["manifests"] | names["temps"]) - {
        f"{job.name}-{1:012d}-{first:012d}{s}" for s in (job.suffix, MANIFEST_SUFFIX)}
    expected = {
        MID_WRITE: {temp},  # only the temporary file: the crash came between two pages
        "file-renamed": {data},  # the whole file, no manifest yet
        "manifest-written": {data, manifest},  # both, but not checkpointed
        "checkpointed": {data, manifest},
    }[crash_at]
    assert new == expected
    status = "done" if crash_at == "checkpointed" else "running"
    crashed = await db.fetchrow(
        "SELECT * FROM export_runs WHERE job = $1 ORDER BY id DESC LIMIT 1", job.name)
    assert (crashed["status"], crashed["from_position"], crashed["to_position"]) == (
        status, first, head)
    assert Path(crashed["path"]) == job.directory / data

    more = await add_events(database, 25, start=70)
    manifests = await run_when_free(Exporter(database, page_rows=7), job)
    windows = [(m["from_position"], m["to_position"]) for m in manifests]
    if crash_at == "checkpointed":
        assert windows == [(head, more)]  # nothing to redo: the checkpoint was made
    else:
        assert windows == [(first, head), (head, more)]
        assert manifests[0]["file"] == data  # the same name: the crashed file was replaced
        assert await db.fetchval("SELECT status FROM export_runs WHERE id = $1",
                                 crashed["id"]) == "abandoned"
    await assert_exactly_once(db, job, more)


async def test_a_redo_that_crashes_is_redone_again(
        database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path) -> None:
    job = make_job(tmp_path / "out", fmt="jsonl")
    head = await add_events(database, 50)
    await crash_export(database, job, MID_WRITE, page_rows=10)
    await add_events(database, 10, start=50)  # the redo still covers (0, head] only
    await crash_export(database, job, "file-renamed", page_rows=10)
    await crash_export(database, job, "manifest-written", page_rows=10)
    runs = await db.fetch(RUNS, job.name)
    assert [(r["status"], r["from_position"], r["to_position"]) for r in runs] == [
        ("abandoned", 0, head), ("abandoned", 0, head), ("running", 0, head)]
    assert len({r["path"] for r in runs}) == 1

    more = await add_events(database, 5, start=60)
    manifests = await run_when_free(Exporter(database), job)
    assert [(m["from_position"], m["to_position"]) for m in manifests] == [(0, head),
                                                                           (head, more)]
    await assert_exactly_once(db, job, more)


async def test_a_crashed_transcripts_run_is_redone(
        database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path) -> None:
    job = make_job(tmp_path / "out", name="tr", kind="transcripts", fmt="jsonl")
    closed = [f"closed-{n}" for n in range(6)]
    changes = []
    for conversation in [*closed, "open-0"]:
        changes += [upsert(conversation, 1000), content(conversation, 0),
                    content(conversation, 1, "bye")]
    changes += [upsert(conversation, 2000, state="CLOSE", stage="CLOSE", dialog_state="CLOSE")
                for conversation in closed]
    head = await append_changes(database, changes)
    await project(database)

    await crash_export(database, job, MID_WRITE)  # some transcripts written, not all
    assert 0 < len(listing(job.directory)["data"]) < len(closed)
    await crash_export(database, job, "transcripts-written")
    assert len(listing(job.directory)["data"]) == len(closed)
    assert not listing(job.directory)["manifests"]

    manifests = await run_when_free(Exporter(database), job)
    assert [(m["from_position"], m["to_position"]) for m in manifests] == [(0, head)]
    names = listing(job.directory)
    assert not names["temps"]
    assert names["manifests"] == {f"tr-{1:012d}-{head:012d}{MANIFEST_SUFFIX}"}
    files = manifests[0]["files"]
    assert sorted(f["conversation_id"] for f in files) == closed
    assert {f["path"] for f in files} == names["data"]
    for entry in files:
        path = job.directory / entry["path"]
        rows = read_rows(path)
        assert [r["sequence"] for r in rows] == [0, 1]
        assert {r["conversation_id"] for r in rows} == {entry["conversation_id"]}
        assert entry["sha256"] == sha256(path) and entry["rows"] == 2
    runs = await db.fetch(RUNS, job.name)
    assert [r["status"] for r in runs] == ["abandoned", "abandoned", "done"]
    assert {r["path"] for r in runs} == {str(job.directory / next(iter(names["manifests"])))}


# -- 2. failures (exceptions) ----------------------------------------------------------------


class Boom(Exception):
    pass


def failing_at(step: str, times: int = 1) -> Callable[[str], None]:
    left = [times]

    def fail(name: str) -> None:
        if name == step and left[0] > 0:
            left[0] -= 1
            raise Boom(f"injected at {name}")

    return fail


@pytest.mark.parametrize("step", ["file-renamed", "manifest-written", "checkpointed"])
async def test_a_failed_run_is_marked_and_its_window_redone(
        database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path, step: str) -> None:
    job = make_job(tmp_path / "out", fmt="jsonl")
    head = await add_events(database, 20)
    with pytest.raises(Boom):
        await Exporter(database, step=failing_at(step)).run_job(job)
    run = await db.fetchrow(RUNS, job.name)
    if step == "checkpointed":  # failing after the checkpoint commits changes nothing
        assert (run["status"], run["error"]) == ("done", None)
    else:
        assert run["status"] == "failed"
        assert run["error"] == f"Boom: injected at {step}"
        assert run["finished_at"] is not None

    more = await add_events(database, 15, start=20)
    manifests = await Exporter(database).run_job(job)
    expected = [(0, head), (head, more)] if step != "checkpointed" else [(head, more)]
    assert [(m["from_position"], m["to_position"]) for m in manifests] == expected
    await assert_exactly_once(db, job, more)


async def test_a_cancelled_run_is_marked_failed_and_redone(
        database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path) -> None:
    """What the scheduler's stop does to a run that outlives the drain time."""
    job = make_job(tmp_path / "out", fmt="parquet")
    head = await add_events(database, 60)
    exporter = Exporter(database, page_rows=5)

    def cancel_mid_write(done: int, total: int) -> None:
        if 0 < done < total:
            running.cancel()

    running = asyncio.create_task(exporter.run_job(job, progress=cancel_mid_write))
    with pytest.raises(asyncio.CancelledError):
        await running
    run = await db.fetchrow(RUNS, job.name)
    assert (run["status"], run["error"]) == ("failed", "cancelled (the process was stopping)")
    assert listing(job.directory) == {"data": set(), "manifests": set(), "temps": set()}

    manifests = await exporter.run_job(job)  # the lock was released: no JobBusyError
    assert [(m["from_position"], m["to_position"]) for m in manifests] == [(0, head)]
    await assert_exactly_once(db, job, head)


async def test_an_unwritable_directory_fails_runs_until_it_is_fixed(
        database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path) -> None:
    job = make_job(tmp_path / "out", fmt="csv")
    job.directory.write_text("a file where the directory should be")  # even root can't write
    head = await add_events(database, 12)
    for attempt in range(2):
        with pytest.raises(ExportError, match="Not a directory; nothing was kept") as caught:
            await Exporter(database).run_job(job)
        assert isinstance(caught.value.__cause__, NotADirectoryError)
        await add_events(database, 3, start=100 + attempt * 3)  # the failed window is kept anyway
    runs = await db.fetch(RUNS, job.name)
    assert [(r["status"], r["from_position"], r["to_position"]) for r in runs] == [
        ("failed", 0, head), ("failed", 0, head)]
    assert all(r["error"].startswith("ExportError: export ev failed: cannot write ")
               for r in runs)

    job.directory.unlink()
    more = await add_events(database, 4, start=200)
    manifests = await Exporter(database).run_job(job)
    assert [(m["from_position"], m["to_position"]) for m in manifests] == [(0, head),
                                                                           (head, more)]
    await assert_exactly_once(db, job, more)


async def test_a_format_change_before_the_redo_leaves_no_stale_file(
        database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path) -> None:
    parquet = make_job(tmp_path / "out", fmt="parquet")
    head = await add_events(database, 20)
    with pytest.raises(Boom):
        await Exporter(database, step=failing_at("manifest-written")).run_job(parquet)
    assert len(listing(parquet.directory)["data"]) == 1

    jsonl = make_job(tmp_path / "out", fmt="jsonl")
    manifests = await Exporter(database).run_job(jsonl)
    assert [(m["from_position"], m["to_position"], m["format"]) for m in manifests] == [
        (0, head, "jsonl")]
    await assert_exactly_once(db, jsonl, head)  # the parquet file is gone


# -- 3. one run per window, whatever runs it ---------------------------------------------------


async def test_two_schedulers_on_one_database_export_each_window_once(
        database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path) -> None:
    job = make_job(tmp_path / "out", fmt="jsonl", schedule="1s")
    finished: list[dict[str, Any]] = []

    def on_done(job_name: str | None, manifest: dict[str, Any]) -> None:
        finished.append(manifest)

    schedulers = [ExportScheduler(Exporter(database, page_rows=50, on_done=on_done), [job])
                  for _ in range(2)]
    stop = asyncio.Event()
    async with event_feed(database):
        tasks = [asyncio.create_task(s.run(stop)) for s in schedulers]
        try:
            await wait_until(lambda: len(finished) >= 3 and all(s.runs >= 3 for s in schedulers),
                             within_s=30)
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    runs = await db.fetch(DONE_RUNS, job.name)
    assert len(runs) == len(finished) >= 3
    slots = [r["scheduled_for"] for r in runs]
    assert None not in slots and len(set(slots)) == len(slots)  # a slot is exported once
    assert all(slot.microsecond == 0 for slot in slots)  # whole seconds from the origin
    head = await db.fetchval(log_sql.HEAD)
    await Exporter(database).run_job(job)  # the rest since the last scheduled run
    await assert_exactly_once(db, job, head)
    assert not await db.fetchval(
        "SELECT count(*) FROM export_runs WHERE job = $1 AND status <> 'done'", job.name)


async def test_a_run_while_another_holds_the_job_is_refused(
        database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path) -> None:
    job = make_job(tmp_path / "out")
    head = await add_events(database, 20)
    reached, release = threading.Event(), threading.Event()

    def hold(name: str) -> None:
        if name == "file-renamed":
            reached.set()
            release.wait(30)

    def other_instance() -> list[dict[str, Any]]:  # another process, as far as the lock goes
        return asyncio.run(Exporter(database, step=hold).run_job(job))

    holding = asyncio.create_task(asyncio.to_thread(other_instance))
    try:
        assert await asyncio.to_thread(reached.wait, 30)
        with pytest.raises(JobBusyError, match="running in another process"):
            await Exporter(database).run_job(job)
        scheduler = ExportScheduler(Exporter(database), [job])
        await scheduler._fire(job.name)  # the scheduler skips it, and counts the attempt
        assert scheduler.runs == 1
    finally:
        release.set()
        manifests = await holding
    assert [(m["from_position"], m["to_position"]) for m in manifests] == [(0, head)]
    assert await Exporter(database).run_job(job) == []
    await assert_exactly_once(db, job, head)
    assert len(await db.fetch(RUNS, job.name)) == 1


async def test_concurrent_runs_of_one_job_make_one_file_per_window(
        database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path) -> None:
    job = make_job(tmp_path / "out", fmt="jsonl")
    head = await add_events(database, 200)
    results = await asyncio.gather(*(Exporter(database, page_rows=10).run_job(job)
                                     for _ in range(4)), return_exceptions=True)
    exported = [r for r in results if isinstance(r, list) and r]
    assert len(exported) == 1, results
    assert all(isinstance(r, JobBusyError) or r == [] for r in results if r is not exported[0])
    await assert_exactly_once(db, job, head)


async def test_the_database_refuses_a_second_run_or_a_second_done_window(
        database: DatabaseTarget, db: asyncpg.Connection) -> None:
    insert = ("INSERT INTO export_runs (job, status, kind, format, from_position, to_position)"
              " VALUES ('ev', $1, 'events', 'jsonl', $2, $3)")
    await db.execute(insert, "running", 0, 10)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(insert, "running", 0, 12)
    await db.execute(insert, "done", 0, 10)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(insert, "done", 0, 11)
    await db.execute(insert, "failed", 0, 11)  # failed and abandoned attempts may repeat
    await db.execute(insert, "failed", 0, 11)


async def test_a_slot_is_run_once(database: DatabaseTarget, db: asyncpg.Connection,
                                  tmp_path: Path) -> None:
    job = make_job(tmp_path / "out")
    slot = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    head = await add_events(database, 10)
    assert len(await Exporter(database).run_job(job, scheduled_for=slot)) == 1
    more = await add_events(database, 10, start=10)
    exporter = Exporter(database)
    assert await exporter.run_job(job, scheduled_for=slot) == []  # another instance's slot
    assert await exporter.run_job(job, scheduled_for=slot - dt.timedelta(seconds=1)) == []
    later = await exporter.run_job(job, scheduled_for=slot + dt.timedelta(seconds=1))
    assert [(m["from_position"], m["to_position"]) for m in later] == [(head, more)]
    assert [r["scheduled_for"] for r in await db.fetch(DONE_RUNS, job.name)] == [
        slot, slot + dt.timedelta(seconds=1)]
    await assert_exactly_once(db, job, more)


# -- 4. retention ----------------------------------------------------------------------------


def age(path: Path, when: dt.datetime) -> None:
    os.utime(path, (when.timestamp(), when.timestamp()))


def backdate_manifest(path: Path, when: dt.datetime) -> None:
    manifest = read_manifest(path)
    assert manifest is not None
    write_json_atomically(path, {**manifest, "created_at": when.isoformat()})


async def test_retention_removes_only_old_files_that_a_manifest_covers(
        database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path) -> None:
    job = make_job(tmp_path / "out", fmt="jsonl", retention_days=7)
    exporter = Exporter(database)
    windows: list[dict[str, Any]] = []
    for n in range(3):
        await add_events(database, 5, start=5 * n)
        windows += await exporter.run_job(job)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    data = [job.directory / m["file"] for m in windows]
    manifests = [p.with_name(p.name.removesuffix(job.suffix) + MANIFEST_SUFFIX) for p in data]
    backdate_manifest(manifests[0], old)  # old manifest, old file: removed
    age(data[0], old)
    backdate_manifest(manifests[1], old)  # old manifest, file modified since: kept
    age(data[2], old)  # young manifest, old file: kept
    stray = job.directory / f"{job.name}-{900:012d}-{999:012d}{job.suffix}"
    stray.write_text("{}\n")  # no manifest (a crashed run's): never removed
    age(stray, old)
    other = make_job(job.directory, name="ev-b", fmt="jsonl")
    await exporter.run_job(other)  # another job in the same directory: "ev-b-…" is "ev-*"
    for name in listing(job.directory)["data"] | listing(job.directory)["manifests"]:
        if name.startswith("ev-b-"):
            age(job.directory / name, old)
            if name.endswith(MANIFEST_SUFFIX):
                backdate_manifest(job.directory / name, old)
    before = listing(job.directory)

    head = await add_events(database, 5, start=15)
    assert len(await exporter.run_job(job)) == 1  # retention runs after each run
    after = listing(job.directory)
    gone = {data[0].name, manifests[0].name}
    assert after["data"] | after["manifests"] == (
        before["data"] | before["manifests"] | {f"ev-{16:012d}-{head:012d}{s}"
                                                for s in (job.suffix, MANIFEST_SUFFIX)}) - gone
    assert manifests[1].exists(), "a kept file lost the manifest that describes it"

    # Much later, everything a manifest covers goes; the stray file and other jobs' stay.
    removed = await asyncio.to_thread(apply_retention, job.directory, job.name, 7,
                                      dt.datetime.now(dt.UTC) + dt.timedelta(days=365))
    assert {p.name for p in removed} == (after["data"] | after["manifests"]) - {
        stray.name} - {n for n in after["data"] | after["manifests"] if n.startswith("ev-b-")}
    assert {n for n in listing(job.directory)["data"]} == {
        stray.name, *(n for n in after["data"] if n.startswith("ev-b-"))}
    # The checkpoint does not depend on the files: the next run continues after it.
    more = await add_events(database, 3, start=20)
    assert [(m["from_position"], m["to_position"]) for m in await exporter.run_job(job)] == [
        (head, more)]


async def test_retention_uses_the_run_time_it_is_given(
        database: DatabaseTarget, tmp_path: Path) -> None:
    job = make_job(tmp_path / "out", fmt="parquet", retention_days=2)
    await add_events(database, 8)
    exporter = Exporter(database)
    first = await exporter.run_job(job)
    file = job.directory / first[0]["file"]
    now = dt.datetime.now(dt.UTC)
    assert await exporter.run_job(job, now=now + dt.timedelta(days=1)) == []
    assert file.exists()  # one day old: kept
    await exporter.run_job(job, now=now + dt.timedelta(days=3))
    assert not listing(job.directory)["data"] and not listing(job.directory)["manifests"]


# -- 5. conversations ------------------------------------------------------------------------


async def test_conversation_exports_follow_the_projection_exactly(
        database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path) -> None:
    job = make_job(tmp_path / "out", name="cv", kind="conversations", fmt="parquet")
    exporter = Exporter(database, page_rows=4)  # several pages per file
    conversations = [f"c-{n:02d}" for n in range(12)]
    changes = []
    for n, conversation in enumerate(conversations):
        changes += [upsert(conversation, 1000), content(conversation, 0),
                    content(conversation, 1, f"m{n}")]
    first = await append_changes(database, changes)
    await project(database)
    one = await exporter.run_job(job)
    assert [(m["from_position"], m["to_position"], m["rows"]) for m in one] == [
        (0, first, len(conversations))]

    changed = ["c-00", "c-03", "c-07", "c-new"]
    second_changes = [content(c, 5, "again") for c in changed[:3]]
    second_changes += [upsert("c-03", 2000, state="CLOSE", stage="CLOSE"), upsert("c-new", 1000)]
    head = await append_changes(database, second_changes)
    assert await exporter.run_job(job) == []  # logged but not projected: not in the window
    await project(database)
    two = await exporter.run_job(job)
    assert [(m["from_position"], m["to_position"]) for m in two] == [(first, head)]

    truth = {r["conversation_id"]: r for r in await db.fetch("SELECT * FROM conversations")}
    files = [read_rows(job.directory / m["file"]) for m in (*one, *two)]
    windows = [(0, first), (first, head)]
    for rows, (low, high) in zip(files, windows, strict=True):
        ids = [r["conversation_id"] for r in rows]
        assert len(ids) == len(set(ids))
        assert all(low < r["last_position"] <= high for r in rows)
        assert [(r["last_position"], r["conversation_id"]) for r in rows] == sorted(
            (r["last_position"], r["conversation_id"]) for r in rows)
    assert sorted(r["conversation_id"] for r in files[0]) == conversations
    assert sorted(r["conversation_id"] for r in files[1]) == sorted(changed)
    assert sorted(truth) == sorted({*conversations, *changed})  # none missing
    newest: dict[str, dict[str, Any]] = {}
    for rows in files:
        newest.update({r["conversation_id"]: r for r in rows})
    for conversation, row in newest.items():  # the newest version is the projection's
        assert row["last_position"] == truth[conversation]["last_position"]
        assert row["state"] == truth[conversation]["state"]
    assert newest["c-03"]["state"] == "CLOSE"
    assert [(r["from_position"], r["to_position"]) for r in await db.fetch(DONE_RUNS, "cv")] == (
        windows)


# -- 6. a job's kind is fixed ----------------------------------------------------------------


async def test_changing_a_jobs_kind_is_a_config_error(
        database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path) -> None:
    head = await add_events(database, 5)
    await project(database)
    await Exporter(database).run_job(make_job(tmp_path / "out", name="daily"))
    before = listing(tmp_path / "out")
    changed = make_job(tmp_path / "out", name="daily", kind="conversations")
    with pytest.raises(ConfigError) as raised:
        await Exporter(database).run_job(changed)
    assert raised.value.setting == "exports.daily.kind"
    assert "'events'" in str(raised.value) and "new name" in str(raised.value)
    assert listing(tmp_path / "out") == before
    assert [r["status"] for r in await db.fetch(RUNS, "daily")] == ["done"]
    renamed = make_job(tmp_path / "out", name="daily-conversations", kind="conversations")
    assert [m["to_position"] for m in await Exporter(database).run_job(renamed)] == [head]


async def test_stopping_the_scheduler_lets_a_running_export_finish(
    database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path,
) -> None:
    """APScheduler cancels its running jobs on shutdown; the export must finish all the same,
    its window checkpointed (not left for a redo)."""
    head = await add_events(database, 3000)
    job = make_job(tmp_path / "out", schedule="1s")
    scheduler = ExportScheduler(Exporter(database, page_rows=5), [job])
    stop = asyncio.Event()
    running = asyncio.create_task(scheduler.run(stop))
    try:
        await wait_until(lambda: bool(scheduler._running), within_s=10)
    finally:
        stop.set()  # while the export (600 pages) is under way
        await asyncio.wait_for(running, 60)
    runs = await db.fetch(RUNS, job.name)
    assert [r["status"] for r in runs] == ["done"], [dict(r) for r in runs]
    assert (runs[0]["from_position"], runs[0]["to_position"]) == (0, head)
