"""The scratch tables of `recorder rebuild`: create them, fill them by COPY, key them after
the bulk load, compare them with the live tables, and copy them over the live ones."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

import asyncpg
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from recorder.db.schema import (
    PROJECTION_TABLES,
    conversations,
    dialogs,
    messages,
    participants,
    projection_positions,
    receipts,
)
from recorder.projection import sql as q
from recorder.projection.sql import REBUILD_SCHEMA

#: Columns that legitimately differ between the live tables and a rebuild.
VOLATILE_COLUMNS = frozenset({"updated_at"})
#: Indexes the fold itself reads through (the rest only serve the read API).
FOLD_INDEXES = frozenset({"dialogs_conversation_id_idx"})
EXAMPLES_PER_TABLE = 5
BULK_TABLES = (messages, receipts)
#: Column orders of fold._conversation_row's rows and of membership_rows' dialogs and
#: participants (times as epoch ms: see copy_epoch_ms_as_timestamps).
CONVERSATION_COLUMNS = ("conversation_id", "account_id", "consumer_id", "first_position",
                        "last_position", *q.STATE_COLUMNS, *q.CHANGE_COLUMNS)
DIALOG_COLUMNS = ("dialog_id", "conversation_id", "dialog_type", "channel_type", "state",
                  "creation_ts", "end_ts", "closed_by", "closed_cause",
                  "meta_data_last_update_ts", "participants")
PARTICIPANT_COLUMNS = ("conversation_id", "participant_id", "role", "state")


@dataclasses.dataclass
class TableDifference:
    live_rows: int
    rebuilt_rows: int
    only_live: int  # rows (all compared columns) in live and not in the rebuild
    only_rebuilt: int
    examples: list[str]  # primary keys of differing rows, "/"-joined


async def create_scratch_tables(admin: asyncpg.Connection) -> None:
    """The schema afresh, with the projection tables and a projection_positions of its own."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]

    def ddl(element: CreateTable | CreateIndex) -> str:
        return str(element.compile(dialect=dialect, schema_translate_map={None: REBUILD_SCHEMA},
                                   render_schema_translate=True))

    statements = [q.DROP_SCRATCH, q.CREATE_SCRATCH]
    for table in (*PROJECTION_TABLES, projection_positions):
        statements.append(q.unlogged(ddl(CreateTable(table))))
        statements += [ddl(CreateIndex(i)) for i in table.indexes if i.name in FOLD_INDEXES]
        if table in BULK_TABLES:
            statements.append(q.unkey_for_bulk_load(table.name))
    async with admin.transaction():
        for statement in statements:
            await admin.execute(statement)


# -- COPY: timestamps as the projector's SQL makes them ------------------------------------------

_PG_EPOCH_S = 946_684_800.0  # 2000-01-01 in Unix seconds: PostgreSQL's own epoch
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def pg_timestamp_us(ms: int) -> tuple[int]:
    """Epoch ms as PostgreSQL's `to_timestamp(ms / 1000.0)` (sql.ms_to_timestamp) stores it:
    microseconds since 2000, computed as float8_timestamptz does (ms / 1000.0 is exact in
    numeric and becomes the nearest double, as `ms / 1000` in Python; then the same double
    operations and round-half-even), so a COPY holds the very value the upserts write.
    The asyncpg "tuple" format of timestamptz."""
    return (round((ms / 1000 - _PG_EPOCH_S) * 1_000_000.0),)


def _timestamp_from_tuple(value: tuple[int]) -> dt.datetime:
    return _PG_EPOCH + dt.timedelta(microseconds=value[0])


async def copy_epoch_ms_as_timestamps(connection: asyncpg.Connection) -> None:
    """On this connection, timestamptz values are sent as the fold's epoch ms (and read as
    datetimes, as usual)."""
    await connection.set_type_codec("timestamptz", schema="pg_catalog", format="tuple",
                                    encoder=pg_timestamp_us, decoder=_timestamp_from_tuple)


async def copy_bulk(connection: asyncpg.Connection, messages_rows: list[tuple[Any, ...]],
                    receipts_rows: list[tuple[Any, ...]]) -> None:
    """Messages and receipts (rows of recorder.projection.rows), by COPY into the keyless bulk
    tables; the connection sends timestamps as epoch ms (copy_epoch_ms_as_timestamps)."""
    await _copy(connection, messages, q.MESSAGE_COLUMNS, messages_rows)
    await _copy(connection, receipts, q.RECEIPT_COLUMNS, receipts_rows)


async def copy_conversations(connection: asyncpg.Connection, rows: list[tuple[Any, ...]],
                             people: list[tuple[Any, ...]]) -> None:
    """Conversations (fold._conversation_row's rows) and the participants of their
    UPSERTs (membership_rows) that are not in the scratch tables yet, by COPY."""
    await _copy(connection, conversations, CONVERSATION_COLUMNS, rows)
    await _copy(connection, participants, PARTICIPANT_COLUMNS, people)


async def copy_dialogs(connection: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Dialogs (membership_rows, one per dialog id), by COPY into the empty dialogs table."""
    await _copy(connection, dialogs, DIALOG_COLUMNS, rows)


async def _copy(connection: asyncpg.Connection, table: Any, columns: tuple[str, ...],
                rows: list[tuple[Any, ...]]) -> None:
    if rows:
        await connection.copy_records_to_table(
            table.name, schema_name=REBUILD_SCHEMA, columns=list(columns), records=rows)


async def key_bulk_tables(*connections: asyncpg.Connection) -> None:
    """After the bulk load: drop repeated message and receipt keys (the earliest position
    stays, as with the upserts), then add the keys; the tables side by side, one per
    connection given."""

    async def key_table(connection: asyncpg.Connection, table: Any) -> None:
        key = [c.name for c in table.primary_key.columns]
        async with connection.transaction():
            await connection.execute(q.drop_repeated_keys(table.name, key))
            await connection.execute(q.key_after_bulk_load(table.name, key))

    tasks = [asyncio.ensure_future(key_table(connections[n % len(connections)], table))
             for n, table in enumerate(BULK_TABLES)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def compare(admin: asyncpg.Connection, live_schema: str) -> dict[str, TableDifference]:
    """Row-for-row differences (all columns but the volatile ones), by table; {} if none."""
    differences: dict[str, TableDifference] = {}
    for table in PROJECTION_TABLES:
        columns = [c.name for c in table.columns if c.name not in VOLATILE_COLUMNS]
        key = [c.name for c in table.primary_key.columns]
        row = await admin.fetchrow(
            q.compare_table(live_schema, table.name, columns, key, EXAMPLES_PER_TABLE)
        )
        assert row is not None
        if row["only_live"] or row["only_rebuilt"]:
            differences[str(table.name)] = TableDifference(
                row["live_rows"], row["rebuilt_rows"], row["only_live"], row["only_rebuilt"],
                list(row["examples"]),
            )
    return differences


async def swap_in(admin: asyncpg.Connection, live_schema: str) -> None:
    """Replace the live rows with the rebuilt ones; the caller holds the transaction."""
    await admin.execute(q.truncate(live_schema, [t.name for t in PROJECTION_TABLES]))
    for table in PROJECTION_TABLES:
        await admin.execute(
            q.copy_from_scratch(live_schema, table.name, [c.name for c in table.columns])
        )
