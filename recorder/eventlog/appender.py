"""One batch, one transaction: dedupe, take positions, COPY; bisect and quarantine bad rows.

The writer (recorder/eventlog/writer.py) decides when and on which connection; this module
decides what a batch does to the database. Fresh rows go in by binary COPY
(`copy_records_to_table`) inside the writer's transaction, after the lock and the positions
(sql.TAKE_POSITIONS); a COPY that fails rolls the batch back like any failed statement.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import operator
import weakref
from collections.abc import Callable, Sequence

import asyncpg

from recorder.db import schema
from recorder.errors import RecorderError
from recorder.eventlog import sql
from recorder.eventlog.quarantine import minimal_quarantine_row, quarantine_event, quarantine_row
from recorder.eventlog.records import HISTORY_EVENT_TYPE, EventRecord, QuarantinedFrame
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

#: Columns the binary COPY sends as PostgreSQL microseconds; the record holds Unix seconds.
TIME_COLUMNS = frozenset(
    column.name for column in schema.events.columns if column.type.python_type is dt.datetime
)
#: 2000-01-01T00:00:00Z, PostgreSQL's timestamp epoch, in Unix seconds.
PG_EPOCH_S = 946_684_800


def pg_micros(seconds: float) -> int:
    """Unix seconds as PostgreSQL's binary timestamptz: microseconds since 2000-01-01 UTC.

    Any time PostgreSQL can hold goes through, past Python's datetime range too (a sender's
    microsecond clock read as milliseconds lands near the year 33658; the log keeps it)."""
    return round((seconds - PG_EPOCH_S) * 1_000_000)


async def use_time_codec(connection: asyncpg.Connection) -> None:
    """timestamptz on this (the writer's) connection as PostgreSQL's own microseconds, both
    ways: no datetime per value, and no value PostgreSQL takes is refused by the client."""
    await connection.set_type_codec(
        "timestamptz", schema="pg_catalog", format="tuple",
        encoder=_encode_time, decoder=operator.itemgetter(0),
    )


def _encode_time(value: object) -> tuple[int]:
    if isinstance(value, int):
        return (value,)
    if isinstance(value, dt.datetime):
        delta = value - dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds,)
    if isinstance(value, float):
        return (pg_micros(value),)
    raise TypeError(f"not a time: {type(value).__name__}")


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
        #: connections that read and write timestamptz as microseconds (use_time_codec)
        self._prepared: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()

    async def append(
        self,
        connection: asyncpg.Connection,
        items: Sequence[QueueItem],
        committed_after: int | None = None,
    ) -> AppendResult:
        if connection not in self._prepared:
            await use_time_codec(connection)
            self._prepared.add(connection)
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
                head, recorded_at, stored, _ = await connection.fetchrow(
                    sql.TAKE_POSITIONS, [event.dedupe_key for event in fresh]
                )
                if stored:
                    already = set(stored)
                    result.duplicates.extend(e for e in fresh if e.dedupe_key in already)
                    fresh = [e for e in fresh if e.dedupe_key not in already]
                first = head - len(fresh) + 1
                if fresh:
                    await _copy(connection, copy_rows(fresh, first, recorded_at))
                result.stored.extend(zip(range(first, head + 1), fresh, strict=True))
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
        if event.type == HISTORY_EVENT_TYPE:
            # Backfilled: the socket has not delivered up to here; a resubscription must
            # still ask from the last sequence the socket gave.
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


async def _copy(connection: asyncpg.Connection, rows: list[tuple[object, ...]]) -> None:
    """The binary COPY of one batch's fresh rows into `events`, in the open transaction.

    The server's refusals (a check, a jsonb that does not parse, NUL in text) arrive as the
    same errors an INSERT raises. A value the client cannot encode (a lone surrogate, a
    bigint out of range, a session id that is no UUID) raises from the encoder instead; asyncpg
    aborts the COPY, and it becomes a DataError here, as asyncpg makes it for a bound parameter,
    so that both lead to the bisection.
    """
    try:
        await connection.copy_records_to_table(
            sql.COPY_TABLE, records=rows, columns=sql.COPY_COLUMNS
        )
    except asyncpg.InterfaceError:
        raise  # the connection, not the rows (recorder.db.retry: transient)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _unencodable(exc) from exc


def _unencodable(exc: Exception) -> asyncpg.exceptions.DataError:
    return asyncpg.exceptions.DataError(f"invalid input for COPY: {type(exc).__name__}: {exc}")


def _row_builder() -> Callable[[Sequence[EventRecord], int, int], list[tuple[object, ...]]]:
    """Compile the row builder from sql.COPY_COLUMNS, as collections.namedtuple compiles its
    class: one tuple display per record instead of a call per value halves the Python cost of
    a batch (bench/append.py profile: 2.9 -> 1.4 us per row)."""
    values = []
    for name in sql.COPY_COLUMNS:
        if name in ("position", "recorded_at"):
            values.append(name)
        elif name in TIME_COLUMNS:
            values.append(f"(None if e.{name} is None else "
                          f"round((e.{name} - {PG_EPOCH_S}) * 1000000))")
        else:
            values.append(f"e.{name}")
    source = (f"lambda events, first, recorded_at: [({', '.join(values)},) "
              f"for position, e in enumerate(events, first)]")
    return eval(source, {}, {})  # type: ignore[no-any-return]


_build_rows = _row_builder()


def copy_rows(
    events: Sequence[EventRecord], first: int, recorded_at: int
) -> list[tuple[object, ...]]:
    """The COPY's rows, one value per sql.COPY_COLUMNS (the table's columns, in table order):
    positions first.. in input order, one recorded_at (as read, in PostgreSQL microseconds),
    and each other column from the record's field of the same name, times as PostgreSQL
    microseconds (`pg_micros`; the connection uses `use_time_codec`)."""
    try:
        return _build_rows(events, first, recorded_at)
    except (ValueError, TypeError, OverflowError) as exc:  # inf, nan
        raise _unencodable(exc) from exc
