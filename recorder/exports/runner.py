"""One export run: a window of positions into files, exact across runs and crashes.

A job's window is (checkpoint, end]: `end` is the log head (kind `events`) or the
projection's saved position, read in the same snapshot as the rows (`conversations`,
`transcripts`). The order of a run:

1. take the job's advisory lock (one run per job across every instance on the database);
2. insert the run (`running`, with its window and file name) and commit;
3. write the data to a temporary file, fsync, rename into place, fsync the directory;
4. write the manifest the same way;
5. mark the run `done`: that commit is the checkpoint.

A crash anywhere leaves a `running` (or `failed`) run behind; the next run redoes exactly
its window first, under the same file names, so files appear whole or not at all and no
window is exported twice or skipped. The redo writes the same rows: positions at or below
the head never change.

A write that fails (full disk, unwritable directory, ...) fails the run with an ExportError
that says what failed and what was kept: a window's data file goes with its manifest, so
nothing of the window is left; transcripts already written stay (each may have replaced an
older version of itself); a job's checkpoint stays where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import re
import socket
import sys
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pyarrow as pa

from recorder import __version__
from recorder.coordination.leases import Held, LeaseBook
from recorder.db import migrate
from recorder.db.target import DatabaseTarget, connect
from recorder.errors import ConfigError, RecorderError
from recorder.eventlog import sql as log_sql
from recorder.exports import sources
from recorder.exports import sql as q
from recorder.exports.columns import BY_KIND, SCHEMA_VERSION
from recorder.exports.files import (
    MANIFEST_SUFFIX,
    AtomicFile,
    FileResult,
    WriteFailed,
    apply_retention,
    failing_as,
    remove_all,
    remove_quietly,
    temp_path,
    write_json_atomically,
)
from recorder.exports.jobs import ExportJob, file_suffix
from recorder.exports.writers import HashingFile, open_writer
from recorder.logs import event
from recorder.projection import PROJECTION_NAME

log = logging.getLogger(__name__)

#: progress(done, total): rows (or positions) so far, of about `total`
Progress = Callable[[int, int], None]
#: step(name): called after each durable step; fault tests crash the process there
Step = Callable[[str], None]
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


class ExportError(RecorderError):
    """An export could not be run or finished (exit status 1)."""


class JobBusyError(ExportError):
    """Another process (or this one) is running the job right now."""


@dataclasses.dataclass(frozen=True)
class Window:
    """What one run covers: positions (low, high] and, ad hoc only, a time range."""

    low: int
    high: int
    since: dt.datetime | None = None
    until: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a run writes: a job's directory, or an ad hoc path (`-`: standard output)."""

    kind: str
    format: str
    compression: str
    job: str | None = None
    directory: Path | None = None
    out: Path | None = None

    @property
    def suffix(self) -> str:
        return file_suffix(self.format, self.compression)

    def base(self, window: Window) -> str:
        return f"{self.job}-{window.low + 1:012d}-{window.high:012d}"

    def data_path(self, window: Window) -> Path:
        if self.out is not None:
            return self.out
        assert self.directory is not None
        return self.directory / f"{self.base(window)}{self.suffix}"

    def manifest_path(self, window: Window) -> Path:
        if self.out is not None:
            if self.kind == "transcripts":
                return self.out / f"transcripts{MANIFEST_SUFFIX}"
            return self.out.with_name(self.out.name + MANIFEST_SUFFIX)
        assert self.directory is not None
        return self.directory / f"{self.base(window)}{MANIFEST_SUFFIX}"

    @property
    def streams(self) -> bool:
        """Written to standard output (`--out -`): no file, no manifest beside it."""
        return self.out is not None and str(self.out) == "-"

    def recorded_path(self, window: Window) -> Path:
        """The path export_runs keeps: the data file, or for transcripts the manifest."""
        if self.kind == "transcripts":
            return self.manifest_path(window)
        return self.data_path(window)


#: How long an export job's lease (pooled databases) outlives a silent runner.
JOB_LEASE_TTL_S = 30.0


class Exporter:
    def __init__(
        self,
        target: DatabaseTarget,
        *,
        page_rows: int = 10_000,
        on_done: Callable[[str | None, dict[str, Any]], None] | None = None,
        step: Step | None = None,
    ) -> None:
        self._target = target
        self.page_rows = page_rows
        self._on_done = on_done
        self._step = step or (lambda name: None)
        self._host = socket.gethostname()

    # -- jobs --------------------------------------------------------------------------------

    async def run_job(
        self, job: ExportJob, *, scheduled_for: dt.datetime | None = None,
        progress: Progress | None = None, now: dt.datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Export the job's new window (after redoing an interrupted one); the manifests.

        Raises JobBusyError when another run of the job holds its lock.
        """
        if self._target.pooled:
            async with self._job_lease(job.name):
                book = await self._connect()
                try:
                    return await self._run_locked(book, job, scheduled_for, progress, now)
                finally:
                    await _close(book)
        book = await self._connect()
        try:
            if not await book.fetchval(q.TRY_JOB_LOCK, q.EXPORT_LOCK_CLASS, job.name):
                raise JobBusyError(f"export job {job.name!r} is running in another process")
            try:
                return await self._run_locked(book, job, scheduled_for, progress, now)
            finally:
                with contextlib.suppress(Exception):
                    await book.fetchval(q.JOB_UNLOCK, q.EXPORT_LOCK_CLASS, job.name)
        finally:
            await _close(book)

    @contextlib.asynccontextmanager
    async def _job_lease(self, name: str) -> AsyncIterator[None]:
        """Behind a transaction-pooling PgBouncer a session advisory lock would stay on
        whichever server connection took it: the job is locked by a lease instead (one row
        in `leases`, renewed while the run lasts, given back at its end)."""
        connection = await self._connect()
        book = LeaseBook(connection, f"{self._host}-{os.getpid()}", JOB_LEASE_TTL_S)
        resource = f"export-job:{name}"
        try:
            await book.ensure([resource])
            taken = await book.acquire([resource], 1)
            if not taken:
                raise JobBusyError(f"export job {name!r} is running in another process")
            held = Held(resource, taken[0].epoch, 0.0)
            renewing = asyncio.create_task(self._renew_job_lease(book, held))
            try:
                yield
            finally:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
                with contextlib.suppress(Exception):
                    await book.release(held, "export done")
        finally:
            await _close(connection)

    async def _renew_job_lease(self, book: LeaseBook, held: Held) -> None:
        while True:
            await asyncio.sleep(JOB_LEASE_TTL_S / 3)
            if not await book.renew([held]):
                log.error("export job lease %s was lost; another run may start", held.resource,
                          extra=event("export.lease.lost"))
                return

    async def _run_locked(
        self, book: asyncpg.Connection, job: ExportJob, scheduled_for: dt.datetime | None,
        progress: Progress | None, now: dt.datetime | None,
    ) -> list[dict[str, Any]]:
        if scheduled_for is not None and await book.fetchval(q.SLOT_TAKEN, job.name,
                                                             scheduled_for):
            log.info("export %s: the run due at %s was made by another instance; skipped",
                     job.name, scheduled_for.isoformat(), extra=event("export.run.skipped"))
            return []
        checkpoint = await book.fetchrow(q.CHECKPOINT, job.name)
        assert checkpoint is not None
        if checkpoint["kind"] is not None and checkpoint["kind"] != job.kind:
            raise ConfigError(
                f"exports.{job.name}.kind",
                f"the job has been exporting {checkpoint['kind']!r}; a job's kind cannot "
                "change (its checkpoint would mean something else): give it a new name",
            )
        target = Target(job.kind, job.format, job.compression, job=job.name,
                        directory=job.directory)
        manifests: list[dict[str, Any]] = []
        interrupted = await book.fetchrow(q.INTERRUPTED, job.name)
        await book.execute(q.ABANDON, job.name)
        if interrupted is not None:
            window = Window(interrupted["from_position"], interrupted["to_position"])
            left = Path(interrupted["path"]) if interrupted["path"] else None
            if interrupted["kind"] != job.kind or window.low != checkpoint["position"]:
                if left is not None:
                    remove_quietly(left, temp_path(left))
            else:
                log.warning("export %s: redoing window (%d, %d] of run %d, which was %s",
                            job.name, window.low, window.high, interrupted["id"],
                            "interrupted" if interrupted["status"] == "running" else "failed",
                            extra=event("export.run.redo"))
                if left is not None and left != target.recorded_path(window):
                    remove_quietly(left, temp_path(left))  # the job's format changed since
                manifest = await self._export(book, target, window, scheduled_for, progress,
                                              redo=True)
                if manifest is not None:
                    manifests.append(manifest)
        low = manifests[-1]["to_position"] if manifests else checkpoint["position"]
        manifest = await self._export(book, target, Window(low, _OPEN), scheduled_for, progress)
        if manifest is not None:
            manifests.append(manifest)
        if job.retention_days is not None:
            removed = await asyncio.to_thread(
                apply_retention, job.directory, job.name, job.retention_days,
                now or dt.datetime.now(dt.UTC),
            )
            if removed:
                log.info("export %s: retention removed %d files older than %g days",
                         job.name, len(removed), job.retention_days,
                         extra=event("export.retention.removed"))
        return manifests

    # -- ad hoc ------------------------------------------------------------------------------

    async def run_adhoc(
        self, kind: str, fmt: str, compression: str, out: Path,
        *, since: int | dt.datetime | None = None, until: int | dt.datetime | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Export once to `out` (a file, `-` for standard output, or a directory for
        transcripts); recorded in export_runs without a job, so no checkpoint moves."""
        target = Target(kind, fmt, compression, out=out)
        window = Window(
            since if isinstance(since, int) else 0,
            until if isinstance(until, int) else _OPEN,
            since if isinstance(since, dt.datetime) else None,
            until if isinstance(until, dt.datetime) else None,
        )
        book = await self._connect()
        try:
            manifest = await self._export(book, target, window, None, progress)
        finally:
            await _close(book)
        if manifest is None:
            raise ExportError("nothing to export: the window is empty")
        return manifest

    # -- one window --------------------------------------------------------------------------

    async def _export(
        self, book: asyncpg.Connection, target: Target, window: Window,
        scheduled_for: dt.datetime | None, progress: Progress | None, *, redo: bool = False,
    ) -> dict[str, Any] | None:
        data = await self._connect()
        try:
            if target.kind == "events":
                head = await data.fetchval(log_sql.HEAD)
            else:
                # One snapshot: the projection's saved position and the rows it describes.
                await data.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                head = await data.fetchval(q.PROJECTION_POSITION, PROJECTION_NAME)
            window = dataclasses.replace(window, high=min(window.high, head))
            if window.high <= window.low:
                return None
            path = target.recorded_path(window)
            run_id = await book.fetchval(
                q.START_RUN, target.job, target.kind, target.format,
                window.low, window.high, str(path), scheduled_for, self._host, os.getpid(),
            )
            published: list[Path] = []  # files of this window already in place
            try:
                try:
                    manifest = await self._write(data, target, window, run_id, progress,
                                                 published)
                    self._step("file-renamed")
                    if not target.streams:
                        await asyncio.to_thread(write_json_atomically,
                                                target.manifest_path(window), manifest)
                except WriteFailed as exc:
                    raise await _failed(target, window, exc, published) from exc.__cause__
                self._step("manifest-written")
                await book.execute(q.FINISH_RUN, run_id, manifest["rows"],
                                   manifest.get("sha256"), orjson.dumps(manifest).decode())
                self._step("checkpointed")
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await asyncio.shield(book.execute(q.FAIL_RUN, run_id, _describe(exc)))
                raise
            log.info("export %s: %s rows of %s (%d, %d] -> %s%s", target.job or "(ad hoc)",
                     manifest["rows"], target.kind, window.low, window.high, path,
                     " (redone)" if redo else "", extra=event("export.run.done"))
            if self._on_done is not None:
                self._on_done(target.job, manifest)
            return manifest
        finally:
            await _close(data)

    async def _write(
        self, data: asyncpg.Connection, target: Target, window: Window, run_id: int,
        progress: Progress | None, published: list[Path],
    ) -> dict[str, Any]:
        columns = BY_KIND[target.kind]
        manifest: dict[str, Any] = {
            "job": target.job, "kind": target.kind, "format": target.format,
            "compression": target.compression,
            "positions": "log" if target.kind == "events" else "projection",
            "from_position": window.low, "to_position": window.high,
        }
        if window.since is not None:
            manifest["since"] = window.since.isoformat()
        if window.until is not None:
            manifest["until"] = window.until.isoformat()
        if target.kind == "transcripts":
            files = await self._write_transcripts(data, target, window, progress, published)
            manifest["rows"] = sum(entry["rows"] for entry in files)
            manifest["conversations"] = len(files)
            manifest["files"] = files
        else:
            total = window.high - window.low
            if target.kind == "conversations":
                total = await data.fetchval(q.COUNT_CONVERSATIONS, window.low, window.high)
                pages = sources.conversation_pages(
                    data, window.low, window.high, page_rows=self.page_rows,
                    since=window.since, until=window.until)
            else:
                pages = sources.event_pages(
                    data, window.low, window.high, page_rows=self.page_rows,
                    since=window.since, until=window.until)
            result = await self._write_file(target, target.data_path(window), pages, total,
                                            progress, published)
            manifest.update(file=result.path.name, rows=result.rows, bytes=result.size,
                            sha256=result.sha256)
        manifest.update(
            schema_version=SCHEMA_VERSION,
            database_revision=migrate.head_revision(),
            columns=columns.describe(),
            created_at=dt.datetime.now(dt.UTC).isoformat(),
            run_id=run_id,
            recorder_version=__version__,
        )
        return manifest

    async def _write_file(
        self, target: Target, path: Path, pages: AsyncIterator[sources.Page], total: int,
        progress: Progress | None, published: list[Path],
    ) -> FileResult:
        """Pages into one file; the next page downloads while a worker thread writes this one."""
        columns = BY_KIND[target.kind]
        if target.streams:
            return await self._write_stream(target, pages)
        file = await asyncio.to_thread(AtomicFile, path, target.format, columns,
                                       target.compression)
        pending: asyncio.Future[int] | None = None
        done = 0

        def write(page: sources.Page) -> int:
            table = page()
            file.write(table)
            return int(table.num_rows)

        try:
            async for page in pages:
                if pending is not None:
                    done += await pending
                    if progress is not None:
                        progress(done, total)
                pending = asyncio.ensure_future(asyncio.to_thread(write, page))
            if pending is not None:
                done += await pending
                pending = None
            if progress is not None:
                progress(done, total)
            result = await asyncio.to_thread(file.publish)
        except BaseException as exc:
            if pending is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pending)
            left = await asyncio.to_thread(file.discard)
            if isinstance(exc, WriteFailed):
                exc.left += left
            raise
        published.append(result.path)
        return result

    async def _write_stream(self, target: Target, pages: AsyncIterator[sources.Page]) -> FileResult:
        stdout = sys.stdout.buffer
        file = HashingFile(stdout)
        # Only the writes: an OSError from the database (a dropped connection) is not ours.
        action = "cannot write to standard output"  # a full disk behind it, a closed pipe
        try:
            with failing_as(action):
                writer = open_writer(target.format, file, BY_KIND[target.kind],
                                     target.compression)
            async for page in pages:
                table = await asyncio.to_thread(page)
                with failing_as(action):
                    await asyncio.to_thread(writer.write, table)
            with failing_as(action):
                await asyncio.to_thread(writer.close)
                stdout.flush()
        except WriteFailed:
            silence_stdout()
            raise
        return FileResult(Path("-"), writer.rows, file.size, file.sha256.hexdigest())

    async def _write_transcripts(
        self, data: asyncpg.Connection, target: Target, window: Window,
        progress: Progress | None, published: list[Path],
    ) -> list[dict[str, Any]]:
        """One file per closed conversation, under its close date; rewritten in place when
        a closed conversation changes again (the newest manifest lists the newest file)."""
        root = target.out if target.out is not None else target.directory
        assert root is not None
        total = await data.fetchval(q.COUNT_CLOSED_CONVERSATIONS, window.low, window.high)
        files: list[dict[str, Any]] = []
        async for rows in sources.closed_conversations(
            data, window.low, window.high, page_rows=1000, since=window.since,
            until=window.until,
        ):
            tables = await sources.transcripts(data, [row["conversation_id"] for row in rows])
            for row in rows:
                conversation_id: str = row["conversation_id"]
                end: dt.datetime | None = row["end_ts"]
                day = end.astimezone(dt.UTC).date().isoformat() if end else "undated"
                name = (conversation_id if _SAFE_NAME.fullmatch(conversation_id)
                        else urllib.parse.quote(conversation_id, safe=""))
                relative = f"{day}/{name}{target.suffix}"
                result = await asyncio.to_thread(
                    _write_one, root / relative, target, tables[conversation_id])
                published.append(result.path)
                files.append({"path": relative, "conversation_id": conversation_id,
                              "rows": result.rows, "bytes": result.size,
                              "sha256": result.sha256})
                if progress is not None:
                    progress(len(files), total)
        self._step("transcripts-written")
        return files

    async def _connect(self) -> asyncpg.Connection:
        return await connect(self._target, server_settings=sources.SESSION_SETTINGS)


_OPEN = 2**62  # "up to the head"


def _write_one(path: Path, target: Target, table: pa.Table) -> FileResult:
    file = AtomicFile(path, target.format, BY_KIND[target.kind], target.compression)
    try:
        file.write(table)
        return file.publish()
    except BaseException as exc:
        left = file.discard()
        if isinstance(exc, WriteFailed):
            exc.left += left
        raise


async def _failed(target: Target, window: Window, exc: WriteFailed,
                  published: list[Path]) -> ExportError:
    """The error for a write that failed, saying what is left of the window and where the
    job's checkpoint is; a window's data file is removed (its manifest never came)."""
    left = list(exc.left)
    if target.streams:
        kept = "what reached standard output is incomplete and has no manifest"
    else:
        if target.kind != "transcripts":
            left += await asyncio.to_thread(remove_all, *published)
            published = []
        # Transcripts stay: each may have replaced an older version of itself.
        root = target.out if target.out is not None else target.directory
        count = len(published)
        if count:
            kept = (f"{count} transcript file{'s' if count != 1 else ''} written before the "
                    f"failure {'were' if count != 1 else 'was'} kept under {root}, with no "
                    "manifest")
        elif not left:
            kept = "nothing was kept: no data file, temporary file or manifest is left"
        else:
            kept = "nothing else was kept"
        if left:
            kept += f"; could not remove {', '.join(str(path) for path in left)}"
    if target.job is None:
        return ExportError(f"export failed: {exc}; {kept}")
    return ExportError(f"export {target.job} failed: {exc}; {kept}; the checkpoint stays at "
                       f"position {window.low}, so the next run exports from there")


def silence_stdout() -> None:
    """Point standard output at /dev/null after writing to it failed: Python would flush
    what is still buffered once more on exit, fail again (a second message) and exit 120."""
    with contextlib.suppress(OSError, ValueError):  # no descriptor (captured, in tests)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled (the process was stopping)"
    return f"{type(exc).__name__}: {exc}"[:2000]


async def _close(connection: asyncpg.Connection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.shield(connection.close(timeout=5))

