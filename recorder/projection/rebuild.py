"""`recorder rebuild`: replay the whole log into fresh tables and compare them with the live ones.

1. Replay: fresh tables in the schema `recorder_rebuild` (from recorder.db.schema, so they are
   exactly what the code expects), filled from position 0 by the fold the projector runs, on
   a connection whose search_path puts that schema first. They are scratch space, so:
   unlogged, no asynchronous commit waits, only the indexes the fold reads through. How the
   replay folds the whole log in one pass and COPYs it in: recorder.projection.replay.
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
from recorder.projection.fold import (
    apply_and_advance,
)
from recorder.projection.projector import PROJECTOR_LOCK_KEY
from recorder.projection.rebuild_tables import (
    TableDifference,
    compare,
    create_scratch_tables,
    swap_in,
)
from recorder.projection.replay import Progress, Replay
from recorder.projection.rows import LogRow
from recorder.projection.sql import REBUILD_SCHEMA

__all__ = ["REBUILD_LOCK_KEY", "RebuildReport", "TableDifference", "add_rebuild_arguments",
           "rebuild", "rebuild_command"]

log = logging.getLogger(__name__)

#: Advisory lock key for "a rebuild is running" (spells "rec-rbld").
REBUILD_LOCK_KEY = 0x7265632D72626C64



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
    max_conversations: int = 50_000,
) -> RebuildReport:
    """Replay the log into fresh tables, compare with live, and swap them in if asked.

    `batch_size`: events per page read from the log (and per transaction when catching up);
    `max_conversations`: conversations the replay holds in memory before it writes them out
    (~5 KB each for bench/rebuild.py's workload; more with bigger conversationDetails).
    """
    if batch_size <= 0 or max_conversations <= 0:
        raise ValueError("batch_size and max_conversations must be positive")
    admin = await connect(target)
    try:
        if not await admin.fetchval(db_sql.TRY_LEADER_LOCK, REBUILD_LOCK_KEY):
            raise RebuildError("another rebuild is running on this database")
        live_schema = await admin.fetchval(q.CURRENT_SCHEMA)
        if not live_schema:
            raise RebuildError("no current schema: check the connection's search_path")
        await create_scratch_tables(admin)
        replay = await Replay.open(target, live_schema, batch_size, progress,
                                    max_conversations)
        try:
            await replay.bulk_load(int(await admin.fetchval(log_sql.HEAD)))
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


async def _converge(admin: asyncpg.Connection, replay: Replay, live_schema: str, swap: bool,
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
        help="events per page read from the log, and per transaction when catching up "
             "(default 20000)",
    )
    parser.add_argument(
        "--max-conversations", type=int, default=50_000, metavar="N",
        help="conversations held in memory while replaying before they are written out "
             "(default 50000)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


async def rebuild_command(settings: Settings, args: argparse.Namespace) -> int:
    """0 when live equals the rebuild (or was swapped for it), 1 when they differ."""
    if args.batch_size <= 0 or args.max_conversations <= 0:
        print("recorder: --batch-size and --max-conversations must be positive", file=sys.stderr)
        return 2
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    async with open_database(settings) as target:
        await migrate.require_current_schema(target)
        try:
            report = await rebuild(target, progress=bar, batch_size=args.batch_size,
                                   swap=args.swap, max_conversations=args.max_conversations)
        finally:
            if bar is not None:
                bar.finish()
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(report.as_text())
    return 0 if report.equal or report.swapped else 1
