"""One batch, one transaction: dedupe, take positions, insert; bisect and quarantine bad rows.

The writer (recorder/eventlog/writer.py) decides when and on which connection; this module
decides what
a batch does to the database.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import asyncpg

from recorder.errors import RecorderError
from recorder.eventlog import sql
from recorder.eventlog.quarantine import minimal_quarantine_row, quarantine_event, quarantine_row
from recorder.eventlog.records import EventRecord, QuarantinedFrame
from recorder.logs import event as log_event

log = logging.getLogger(__name__)

# Errors caused by the rows themselves: the batch is bisected and the bad rows quarantined.
# Any other database error (permissions, a missing table) stops the writer loudly.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    asyncpg.exceptions.ProgramLimitExceededError,
)

QueueItem = EventRecord | QuarantinedFrame


class LogIntegrityError(RecorderError):
    """A unique key of the log was violated: positions or keys disagree with the table.

    Under the table lock this cannot happen unless something outside the writer changed the
    log (a bad restore, a hand edit). The writer stops rather than guess.
    """


@dataclasses.dataclass
class AppendResult:
    """What one committed batch did. Duplicates were already in the log: they are durable too."""

    stored: list[tuple[int, EventRecord]] = dataclasses.field(default_factory=list)
    duplicates: list[EventRecord] = dataclasses.field(default_factory=list)
    quarantined: list[QuarantinedFrame] = dataclasses.field(default_factory=list)
    head: int = 0

    def merge(self, other: AppendResult) -> None:
        self.stored.extend(other.stored)
        self.duplicates.extend(other.duplicates)
        self.quarantined.extend(other.quarantined)
        self.head = max(self.head, other.head)


class BatchAppender:
    def __init__(self, head: Callable[[], int], on_fallback: Callable[[], None]) -> None:
        self._head = head
        self._on_fallback = on_fallback

    async def append(
        self,
        connection: asyncpg.Connection,
        items: Sequence[QueueItem],
        committed_after: int | None = None,
    ) -> AppendResult:
        events = [item for item in items if isinstance(item, EventRecord)]
        frames = [item for item in items if isinstance(item, QuarantinedFrame)]
        recovered = AppendResult(head=self._head())
        if committed_after is not None and events:
            recovered, events = await self._recover(connection, events, committed_after)
        try:
            result = await self._append_batch(connection, events, frames)
            result.merge(recovered)
            result.stored.sort(key=lambda stored: stored[0])
            return result
        except asyncpg.UniqueViolationError as exc:
            raise LogIntegrityError(f"log keys disagree with the writer: {exc}") from exc
        except DATA_ERRORS as exc:
            log.warning(
                "batch of %d events failed (%s: %s); bisecting to find the bad rows",
                len(events), type(exc).__name__, exc,
                extra=log_event("writer.batch.bisecting"),
            )
            self._on_fallback()
        result = recovered
        if frames:
            result.merge(await self._append_batch(connection, [], frames))
        middle = len(events) // 2  # the whole batch just failed: start with its halves
        result.merge(await self._append_bisecting(connection, events[:middle]))
        result.merge(await self._append_bisecting(connection, events[middle:]))
        result.stored.sort(key=lambda stored: stored[0])
        return result

    async def _recover(
        self, connection: asyncpg.Connection, events: list[EventRecord], committed_after: int
    ) -> tuple[AppendResult, list[EventRecord]]:
        """Report as stored what a failed attempt committed; return the rest to append."""
        rows = await connection.fetch(
            sql.STORED_SINCE, [e.dedupe_key for e in events], committed_after
        )
        positions = {row["dedupe_key"]: row["position"] for row in rows}
        result = AppendResult(head=self._head())
        rest: list[EventRecord] = []
        for event in events:
            position = positions.pop(event.dedupe_key, None)
            if position is None:
                rest.append(event)
            else:
                result.stored.append((position, event))
        if result.stored:
            result.head = max(p for p, _ in result.stored)
        return result, rest

    async def _append_bisecting(
        self, connection: asyncpg.Connection, events: Sequence[EventRecord]
    ) -> AppendResult:
        """Halve a failing batch until the failing rows stand alone; quarantine those."""
        if not events:
            return AppendResult(head=self._head())
        try:
            return await self._append_batch(connection, events, [])
        except asyncpg.UniqueViolationError as exc:
            raise LogIntegrityError(f"log keys disagree with the writer: {exc}") from exc
        except DATA_ERRORS as exc:
            if len(events) == 1:
                frame = quarantine_event(events[0], f"{type(exc).__name__}: {exc}")
                return await self._append_batch(connection, [], [frame])
        middle = len(events) // 2
        result = await self._append_bisecting(connection, events[:middle])
        result.merge(await self._append_bisecting(connection, events[middle:]))
        return result

    async def _append_batch(
        self,
        connection: asyncpg.Connection,
        events: Sequence[EventRecord],
        frames: Sequence[QuarantinedFrame],
    ) -> AppendResult:
        unique: dict[bytes, EventRecord] = {}
        duplicates: list[EventRecord] = []
        for event in events:
            if event.dedupe_key in unique:
                duplicates.append(event)
            else:
                unique[event.dedupe_key] = event
        fresh = list(unique.values())
        result = AppendResult(duplicates=duplicates, quarantined=list(frames))
        async with connection.transaction():
            if frames:
                await self._insert_quarantine(connection, frames)
            if fresh:
                await connection.execute(sql.LOCK_EVENTS)
                rows = await connection.fetch(sql.APPEND_BATCH, *_columns(fresh))
                stored_keys = {row["dedupe_key"]: row["position"] for row in rows}
                for event in fresh:
                    position = stored_keys.get(event.dedupe_key)
                    if position is None:
                        result.duplicates.append(event)
                    else:
                        result.stored.append((position, event))
                await _advance_cursors(connection, result.stored)
        if result.stored:
            result.head = result.stored[-1][0]
        return result

    async def _insert_quarantine(
        self, connection: asyncpg.Connection, frames: Sequence[QuarantinedFrame]
    ) -> None:
        try:
            async with connection.transaction():  # a savepoint inside the batch
                await connection.executemany(
                    sql.INSERT_QUARANTINE, [quarantine_row(f) for f in frames]
                )
        except DATA_ERRORS:
            await connection.executemany(
                sql.INSERT_QUARANTINE, [minimal_quarantine_row(f) for f in frames]
            )

async def _advance_cursors(
    connection: asyncpg.Connection, stored: Sequence[tuple[int, EventRecord]]
) -> None:
    latest: dict[str, EventRecord] = {}
    for _, event in stored:
        if event.kind != "messaging" or event.sequence is None or event.dialog_id is None:
            continue
        seen = latest.get(event.dialog_id)
        if seen is None or (seen.sequence or 0) < event.sequence:
            latest[event.dialog_id] = event
    if latest:
        events = list(latest.values())
        await connection.execute(
            sql.ADVANCE_CURSORS,
            [e.dialog_id for e in events],
            [e.conversation_id for e in events],
            [e.consumer_id for e in events],
            [e.sequence for e in events],
        )


def _columns(events: Sequence[EventRecord]) -> tuple[list[object], ...]:
    return (
        [e.received_at for e in events],
        [e.account_id for e in events],
        [e.consumer_id for e in events],
        [e.session_id for e in events],
        [e.kind for e in events],
        [e.type for e in events],
        [e.change_type for e in events],
        [e.conversation_id for e in events],
        [e.dialog_id for e in events],
        [e.sequence for e in events],
        [e.originator_id for e in events],
        [e.server_ts for e in events],
        [e.dedupe_key for e in events],
        [e.payload for e in events],
    )
