"""The replay of `recorder rebuild`: the log folded into the scratch tables, fast.

The first replay, to the head, folds the whole range as one batch (`Replay.bulk_load`): the
log is read in pages (the next one while this one is folded), messages and receipts are COPYed
page by page into tables without keys, and the conversations stay in memory, merged as within
one batch, until they are COPYed once at the end: none is read back or upserted. Then the
server keys the bulk tables (repeats dropped, the earliest position kept: what the upserts do)
while Python builds the conversation rows, and conversations, participants, dialogs and the
saved position commit together. Times go in as the fold's epoch ms, converted as PostgreSQL
converts them (rebuild_tables.pg_timestamp_us).

Memory: up to three pages of events and their rows, and the conversations folded so far; past
`max_conversations`, the half touched longest ago (most conversations end) is written out: new
ones by COPY, stored ones (a conversation that came back) merged as the projector merges a
batch. Garbage collection is off meanwhile: the fold makes no reference cycles.

After it, `Replay.run_to` replays on batch by batch into the keyed tables, as the projector
does (recorder.projection.rebuild converges the rebuild with the live projection).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from recorder.db.target import DatabaseTarget, connect
from recorder.logs import event
from recorder.projection import PROJECTION_NAME
from recorder.projection import sql as q
from recorder.projection.fold import (
    advance_position,
    apply_and_advance,
    conversation_row,
    write_batch,
    write_history_rows,
)
from recorder.projection.rebuild_tables import (
    copy_bulk,
    copy_conversations,
    copy_dialogs,
    copy_epoch_ms_as_timestamps,
    key_bulk_tables,
)
from recorder.projection.rows import Batch, ConversationFacts, membership_rows
from recorder.projection.sql import REBUILD_SCHEMA, ident

log = logging.getLogger(__name__)

#: (position reached, position to reach): what a progress bar is told
Progress = Callable[[int, int], None]


class Replay:
    """Folds the log into the scratch tables: reads the next page while it folds this one,
    and folds while PostgreSQL writes the previous one."""

    def __init__(self, work: asyncpg.Connection, reader: asyncpg.Connection,
                 keyer: asyncpg.Connection, batch_size: int, progress: Progress | None,
                 max_conversations: int) -> None:
        self._work, self._reader, self._keyer = work, reader, keyer
        self.batch_size, self._progress = batch_size, progress
        self.max_conversations = max_conversations
        self.position = 0
        self.seconds = 0.0  # time spent replaying

    @classmethod
    async def open(cls, target: DatabaseTarget, live_schema: str, batch_size: int,
                   progress: Progress | None, max_conversations: int) -> Replay:
        # Scratch tables: losing them in a crash loses nothing, so no commit waits for a flush.
        settings = {"search_path": f"{ident(REBUILD_SCHEMA)}, {ident(live_schema)}",
                    "synchronous_commit": "off"}
        opened: list[asyncpg.Connection] = []
        try:
            opened.append(await connect(target, server_settings=settings))
            for _ in range(2):  # the reader, and a second one to key the bulk tables side by side
                opened.append(await connect(target, server_settings={"synchronous_commit": "off"}))
            await copy_epoch_ms_as_timestamps(opened[0])
            await opened[0].execute(q.ENSURE_POSITION, PROJECTION_NAME)
        except BaseException:
            await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)
            raise
        work, reader, keyer = opened
        return cls(work, reader, keyer, batch_size, progress, max_conversations)

    async def close(self) -> None:
        await asyncio.gather(self._work.close(), self._reader.close(), self._keyer.close())

    async def bulk_load(self, until: int) -> None:
        """The first replay, into the empty tables: 0 → until as one fold (module docstring)."""
        started = time.monotonic()
        collecting = gc.isenabled()
        gc.disable()  # the fold makes no cycles; collections would walk all it holds, often
        pages = _Pages(self._reader, self.position, until, self.batch_size)
        copying: asyncio.Future[None] | None = None
        batch, fresh = Batch(), True  # fresh: no conversation written yet
        try:
            async for rows, new in pages:
                await _fold_cooperatively(rows, batch)
                del rows
                _warn_unreadable(batch)
                messages, receipts = list(batch.messages.values()), list(batch.receipts.values())
                batch.messages.clear()  # a repeat in a later page is dropped with the keys
                batch.receipts.clear()
                if copying is not None:
                    await copying
                copying = asyncio.ensure_future(self._copy(messages, receipts, new, until))
                if new < until and len(batch.conversations) > self.max_conversations:
                    cold = _coldest(batch, keep=self.max_conversations // 2)
                    await copying
                    async with self._work.transaction():
                        await self._write_conversations(cold, fresh)
                    fresh = False
            if copying is not None:
                await copying
            # The server keys the bulk tables while Python builds the conversation rows; the
            # position commits with the conversations, once the keys are in.
            keying = asyncio.ensure_future(key_bulk_tables(self._reader, self._keyer))
            try:
                async with self._work.transaction():
                    await advance_position(self._work, self.position, until)
                    await self._write_conversations(batch, fresh)
                    await write_history_rows(self._work, batch)
                    await keying
            finally:
                if not keying.done():
                    keying.cancel()
                    await asyncio.gather(keying, return_exceptions=True)
            self.position = until
        finally:
            if collecting:
                gc.enable()
            self.seconds += time.monotonic() - started
            await pages.aclose()
            if copying is not None and not copying.done():
                copying.cancel()
                await asyncio.gather(copying, return_exceptions=True)

    async def _copy(self, messages: list[tuple[Any, ...]], receipts: list[tuple[Any, ...]],
                    new: int, until: int) -> None:
        await copy_bulk(self._work, messages, receipts)
        if self._progress is not None:
            self._progress(new, until)

    async def _write_conversations(self, batch: Batch, fresh: bool) -> None:
        """The conversations, participants and dialogs of `batch`; the caller holds the
        transaction. Those not stored yet are COPYed in; stored ones (only after a first
        write, `fresh` False) are merged with their rows as the projector does
        (recorder.projection.fold.write_batch)."""
        facts = list(batch.conversations.values())
        if not fresh:
            ids = [f.conversation_id for f in facts]
            stored = {r[0] for r in await self._work.fetch(q.STORED_CONVERSATIONS, ids)}
            if stored:
                merged = Batch()
                merged.conversations = {f.conversation_id: f for f in facts
                                        if f.conversation_id in stored}
                await write_batch(self._work, merged)
                facts = [f for f in facts if f.conversation_id not in stored]
        dialogs = await self._copy_new_conversations(facts)
        unique = list({row[0]: row for row in dialogs}.values())  # as write_batch: last wins
        if fresh:
            await copy_dialogs(self._work, unique)
        elif unique:  # a dialog may be stored already, under another conversation
            columns = [list(column) for column in zip(*unique, strict=True)]
            await self._work.execute(q.UPSERT_DIALOGS, *columns)

    async def _copy_new_conversations(self, facts: list[ConversationFacts],
                                      ) -> list[tuple[Any, ...]]:
        """Conversations not stored yet (and the participants of their UPSERTs), by COPY;
        each chunk is COPYed while the next is built. Returns their dialogs' rows."""
        copying: asyncio.Future[None] | None = None
        dialogs: list[tuple[Any, ...]] = []
        try:
            for chunk in _chunks(facts, 2000):
                rows: list[tuple[Any, ...]] = []
                people: list[tuple[Any, ...]] = []
                for f in chunk:
                    row, won = conversation_row(f, None)
                    rows.append(row)
                    if won and f.upsert is not None:
                        upsert_people, upsert_dialogs = membership_rows(f.conversation_id,
                                                                        f.upsert)
                        people += upsert_people
                        dialogs += upsert_dialogs
                if copying is not None:
                    await copying
                copying = asyncio.ensure_future(copy_conversations(self._work, rows, people))
            if copying is not None:
                await copying
        finally:
            if copying is not None and not copying.done():
                copying.cancel()
                await asyncio.gather(copying, return_exceptions=True)
        return dialogs

    async def run_to(self, until: int) -> None:
        """Replay on to `until` (after bulk_load, into keyed tables) batch by batch, as the
        projector does."""
        if until <= self.position:
            return
        started = time.monotonic()
        pages = _Pages(self._reader, self.position, until, self.batch_size)
        writing: asyncio.Future[None] | None = None
        old = self.position
        try:
            async for rows, new in pages:
                batch = await _fold_cooperatively(rows)
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(self._write(batch, old, new, until))
                old = new
            if writing is not None:
                await writing
        finally:
            self.seconds += time.monotonic() - started
            await pages.aclose()
            if writing is not None and not writing.done():
                writing.cancel()
                await asyncio.gather(writing, return_exceptions=True)

    async def _write(self, batch: Batch, old: int, new: int, until: int) -> None:
        await apply_and_advance(self._work, batch, old, new)
        self.position = new
        if self._progress is not None:
            self._progress(new, until)


def _coldest(batch: Batch, keep: int) -> Batch:
    """The conversations of `batch` touched longest ago (lowest last positions), taken out of
    it so that `keep` remain: in a log, most conversations end, and those are written once."""
    ranked = sorted(batch.conversations.values(), key=lambda facts: facts.last_position)
    cold = Batch()
    for facts in ranked[:max(0, len(ranked) - keep)]:
        cold.conversations[facts.conversation_id] = batch.conversations.pop(facts.conversation_id)
    return cold


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[start:start + size] for start in range(0, len(items), size)]


class _Pages:
    """READ_RANGE pages of (after, until], each with the position it reaches; the next page
    is read while the caller works on this one. Pages start small and double up to `size`,
    so that folding starts early and each read hides behind the fold of the page before."""

    FIRST = 2_000

    def __init__(self, reader: asyncpg.Connection, after: int, until: int, size: int) -> None:
        self._reader, self._until, self._size = reader, until, size
        self._limit = min(size, self.FIRST)
        self._next: asyncio.Future[tuple[list[Any], int]] | None = None
        if after < until:
            self._next = asyncio.ensure_future(self._read(after))

    def __aiter__(self) -> _Pages:
        return self

    async def __anext__(self) -> tuple[list[Any], int]:
        if self._next is None:
            raise StopAsyncIteration
        rows, new = await self._next
        self._next = asyncio.ensure_future(self._read(new)) if new < self._until else None
        return rows, new

    async def _read(self, after: int) -> tuple[list[Any], int]:
        limit = self._limit
        self._limit = min(self._size, 2 * limit)
        rows = await self._reader.fetch(q.READ_RANGE, after, self._until, limit)
        return rows, (rows[-1][0] if len(rows) == limit else self._until)

    async def aclose(self) -> None:
        if self._next is not None and not self._next.done():
            self._next.cancel()
            await asyncio.gather(self._next, return_exceptions=True)
        self._next = None


async def _fold_cooperatively(rows: list[Any], batch: Batch | None = None,
                              slice_size: int = 100) -> Batch:
    """fold() of READ_RANGE rows (into `batch`, else a new one), yielding to the event loop
    often, so that the next page keeps arriving and the previous one keeps being written:
    Python folds on one core while the server reads and writes on the other."""
    batch = Batch() if batch is None else batch
    add = batch.add_row
    for start in range(0, len(rows), slice_size):
        for row in rows[start:start + slice_size]:
            add(*row)
        await asyncio.sleep(0)
    return batch


def _warn_unreadable(batch: Batch) -> None:
    if batch.unreadable:
        log.warning("projection skipped %d events it cannot read, at positions %s",
                    len(batch.unreadable), batch.unreadable[:10],
                    extra=event("projection.events.unreadable"))
        batch.unreadable.clear()
