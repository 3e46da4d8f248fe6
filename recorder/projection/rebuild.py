"""`recorder rebuild`: replay the whole log into fresh tables and compare them with the live ones.

1. Replay: fresh tables in the schema `recorder_rebuild` (from recorder.db.schema, so they are
   exactly what the code expects), filled from position 0 by the fold the projector runs, on
   a connection whose search_path puts that schema first. They are scratch space, so:
   unlogged, no asynchronous commit waits, only the indexes the fold reads through, and
   messages and receipts COPYed in without keys, which are added once at the end (repeats
   dropped, earliest position kept: what the upserts do). The next batch is read, and folded
   in Python, while PostgreSQL writes the previous one.
2. Converge: lock the live position row (FOR UPDATE: a running projector pauses at its
   compare-and-set, holding nothing else). If live is ahead (the log kept growing), the
   rebuild replays on to that position (outside the lock if it is far ahead, then again).
   If live is behind and no projector runs (its advisory lock is free), the fold is applied
   to the live tables inline, in the same transaction. If live is behind and a projector
   runs, it is left to catch up, and the rebuild tries again.
3. Compare row for row at that one position (EXCEPT ALL both ways; `updated_at` excluded).
4. With `swap`: in the same transaction, truncate the live tables and copy the rebuilt rows
   in. Copying (not renaming) keeps grants, views and index names of the live tables, and
   the saved position already equals the rebuilt one after step 2.

The scratch schema is dropped at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson

from recorder.config import Settings
from recorder.db import migrate
from recorder.db import sql as db_sql
from recorder.db.target import DatabaseTarget, connect, open_database
from recorder.errors import RebuildError
from recorder.eventlog import sql as log_sql
from recorder.logs import event
from recorder.progress import ProgressBar
from recorder.projection import PROJECTION_NAME
from recorder.projection import sql as q
from recorder.projection.fold import apply_and_advance
from recorder.projection.projector import PROJECTOR_LOCK_KEY
from recorder.projection.rebuild_tables import (
    TableDifference,
    compare,
    create_scratch_tables,
    key_bulk_tables,
    swap_in,
)
from recorder.projection.rows import Batch, LogRow
from recorder.projection.sql import REBUILD_SCHEMA, ident

__all__ = ["REBUILD_LOCK_KEY", "RebuildReport", "TableDifference", "add_rebuild_arguments",
           "rebuild", "rebuild_command"]

log = logging.getLogger(__name__)

#: Advisory lock key for "a rebuild is running" (spells "rec-rbld").
REBUILD_LOCK_KEY = 0x7265632D72626C64

Progress = Callable[[int, int], None]


@dataclasses.dataclass
class RebuildReport:
    events: int  # log positions replayed
    seconds: float  # replay time
    events_per_s: float
    position: int  # where live and rebuild were compared
    equal: bool
    differences: dict[str, TableDifference]  # only the tables that differ
    swapped: bool = False
    compare_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def as_text(self) -> str:
        lines = [
            f"replayed {self.events} events in {self.seconds:.2f} s "
            f"({self.events_per_s:,.0f} events/s); compared at position {self.position} "
            f"in {self.compare_seconds:.2f} s",
        ]
        if self.equal:
            lines.append("the projection equals the rebuild")
        else:
            lines.append("the projection differs from the rebuild:")
            for table, diff in self.differences.items():
                lines.append(
                    f"  {table}: {diff.only_live} rows only in live, {diff.only_rebuilt} only "
                    f"in the rebuild (live {diff.live_rows} rows, rebuilt {diff.rebuilt_rows}); "
                    f"keys e.g. {', '.join(diff.examples)}"
                )
        if self.swapped:
            lines.append(f"swapped: the live tables now hold the rebuild at {self.position}")
        return "\n".join(lines)


async def rebuild(
    target: DatabaseTarget,
    *,
    progress: Progress | None = None,
    batch_size: int = 20_000,
    swap: bool = False,
    catch_up_timeout_s: float = 60.0,
) -> RebuildReport:
    """Replay the log into fresh tables, compare with live, and swap them in if asked."""
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    admin = await connect(target)
    try:
        if not await admin.fetchval(db_sql.TRY_LEADER_LOCK, REBUILD_LOCK_KEY):
            raise RebuildError("another rebuild is running on this database")
        live_schema = await admin.fetchval(q.CURRENT_SCHEMA)
        if not live_schema:
            raise RebuildError("no current schema: check the connection's search_path")
        await create_scratch_tables(admin)
        replay = await _Replay.open(target, live_schema, batch_size, progress)
        try:
            await replay.run_to(int(await admin.fetchval(log_sql.HEAD)))
            await replay.finish_bulk()
            report = await _converge(admin, replay, live_schema, swap, catch_up_timeout_s)
        finally:
            await replay.close()
        report.events, report.seconds = replay.position, replay.seconds
        report.events_per_s = report.events / report.seconds if report.seconds > 0 else 0.0
        return report
    finally:
        try:  # scratch space only; a failure here must not hide the one that brought us here
            await admin.execute(q.DROP_SCRATCH)
            await admin.execute(q.UNLOCK, REBUILD_LOCK_KEY)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("could not drop the %s schema: %s", REBUILD_SCHEMA, exc,
                        extra=event("rebuild.schema.drop_failed"))
        finally:
            await admin.close()


class _Replay:
    """Folds the log into the scratch tables: reads the next batch and folds it in Python
    while PostgreSQL writes the previous one."""

    def __init__(self, work: asyncpg.Connection, reader: asyncpg.Connection, batch_size: int,
                 progress: Progress | None) -> None:
        self._work, self._reader = work, reader
        self.batch_size, self._progress = batch_size, progress
        self.position = 0
        self.seconds = 0.0  # time spent replaying
        self.bulk = True  # messages and receipts by COPY, keys added by finish_bulk()

    @classmethod
    async def open(cls, target: DatabaseTarget, live_schema: str, batch_size: int,
                   progress: Progress | None) -> _Replay:
        # Scratch tables: losing them in a crash loses nothing, so no commit waits for a flush.
        settings = {"search_path": f"{ident(REBUILD_SCHEMA)}, {ident(live_schema)}",
                    "synchronous_commit": "off"}
        work = await connect(target, server_settings=settings)
        try:
            reader = await connect(target)
        except BaseException:
            await work.close()
            raise
        replay = cls(work, reader, batch_size, progress)
        await work.execute(q.ENSURE_POSITION, PROJECTION_NAME)
        return replay

    async def close(self) -> None:
        await asyncio.gather(self._work.close(), self._reader.close())

    async def run_to(self, until: int) -> None:
        if until <= self.position:
            return
        started = time.monotonic()
        reading = asyncio.ensure_future(self._read(self.position, until))
        writing: asyncio.Future[None] | None = None
        old = self.position
        try:
            while True:
                rows, new = await reading
                if new < until:
                    reading = asyncio.ensure_future(self._read(new, until))
                batch = await _fold_cooperatively(rows)
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(self._write(batch, old, new, until))
                old = new
                if new >= until:
                    await writing
                    return
        finally:
            self.seconds += time.monotonic() - started
            for task in (reading, writing):
                if task is not None and not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

    async def finish_bulk(self) -> None:
        """Drop repeated message and receipt keys (the earliest position stays), add the keys."""
        if not self.bulk:
            return
        started = time.monotonic()
        await key_bulk_tables(self._work)
        self.bulk = False
        self.seconds += time.monotonic() - started

    async def _read(self, after: int, until: int) -> tuple[list[Any], int]:
        rows = await self._reader.fetch(q.READ_RANGE, after, until, self.batch_size)
        return rows, (rows[-1][0] if len(rows) == self.batch_size else until)

    async def _write(self, batch: Batch, old: int, new: int, until: int) -> None:
        bulk_schema = REBUILD_SCHEMA if self.bulk else None
        await apply_and_advance(self._work, batch, old, new, bulk_schema=bulk_schema)
        self.position = new
        if self._progress is not None:
            self._progress(new, until)


async def _fold_cooperatively(rows: list[Any], slice_size: int = 500) -> Batch:
    """fold() of READ_RANGE rows, yielding to the event loop now and then so the previous
    batch's statements keep flowing: Python folds on one core while the server writes on the
    other."""
    batch = Batch()
    add = batch.add_row
    for start in range(0, len(rows), slice_size):
        for row in rows[start:start + slice_size]:
            add(*row)
        await asyncio.sleep(0)
    return batch


async def _converge(admin: asyncpg.Connection, replay: _Replay, live_schema: str, swap: bool,
                    catch_up_timeout_s: float) -> RebuildReport:
    """Bring live and rebuild to one position, then compare (and swap) under the row lock."""
    deadline = time.monotonic() + catch_up_timeout_s
    while True:
        behind = False
        async with admin.transaction():
            await admin.execute(q.ENSURE_POSITION, PROJECTION_NAME)
            live = int(await admin.fetchval(q.LOCK_POSITION, PROJECTION_NAME))
            if live > replay.position + replay.batch_size:
                pass  # far ahead: replay outside the lock, not while the projector waits on it
            elif live > replay.position:
                await replay.run_to(live)
            elif live < replay.position and await admin.fetchval(
                    q.TRY_XACT_LOCK, PROJECTOR_LOCK_KEY):
                await _fold_inline(admin, live, replay.position, replay.batch_size)
                live = replay.position
            else:
                behind = live < replay.position  # and a projector runs: let it catch up
            if live == replay.position:
                started = time.monotonic()
                differences = await compare(admin, live_schema)
                if swap and differences:
                    await swap_in(admin, live_schema)
                return RebuildReport(
                    events=0, seconds=0.0, events_per_s=0.0, position=live,
                    equal=not differences, differences=differences,
                    swapped=swap and bool(differences),
                    compare_seconds=time.monotonic() - started,
                )
        if behind:
            await _wait_for_live(admin, replay.position, deadline)
        else:
            await replay.run_to(live)


async def _fold_inline(admin: asyncpg.Connection, live: int, until: int, batch_size: int) -> None:
    """Bring the live tables to `until` with the projector's own fold (no projector runs)."""
    while live < until:
        found = await admin.fetch(q.READ_RANGE, live, until, batch_size)
        rows = [LogRow(*r) for r in found]
        new = rows[-1].position if len(rows) == batch_size else until
        await apply_and_advance(admin, rows, live, new)
        live = new


async def _wait_for_live(admin: asyncpg.Connection, position: int, deadline: float) -> None:
    while int(await admin.fetchval(q.LOAD_POSITION, PROJECTION_NAME)) < position:
        if time.monotonic() > deadline:
            raise RebuildError(
                f"the running projector did not reach position {position} in time; "
                "is it stuck? (see `recorder status`)"
            )
        await asyncio.sleep(0.05)


# -- the command line ----------------------------------------------------------------------------


def add_rebuild_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--swap", action="store_true",
        help="replace the live projection tables with the rebuild (default: compare only)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=20_000, metavar="N",
        help="events per replay transaction (default 20000)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


async def rebuild_command(settings: Settings, args: argparse.Namespace) -> int:
    """0 when live equals the rebuild (or was swapped for it), 1 when they differ."""
    if args.batch_size <= 0:
        print("recorder: --batch-size must be positive", file=sys.stderr)
        return 2
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    async with open_database(settings) as target:
        await migrate.require_current_schema(target)
        try:
            report = await rebuild(target, progress=bar, batch_size=args.batch_size,
                                   swap=args.swap)
        finally:
            if bar is not None:
                bar.finish()
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(report.as_text())
    return 0 if report.equal or report.swapped else 1
