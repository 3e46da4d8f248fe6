"""The scratch tables of `recorder rebuild`: create them, key them after the bulk load,
compare them with the live tables, and copy them over the live ones."""

from __future__ import annotations

import dataclasses

import asyncpg
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from recorder.db.schema import PROJECTION_TABLES, messages, projection_positions, receipts
from recorder.projection import sql as q
from recorder.projection.sql import REBUILD_SCHEMA

#: Columns that legitimately differ between the live tables and a rebuild.
VOLATILE_COLUMNS = frozenset({"updated_at"})
#: Indexes the fold itself reads through (the rest only serve the read API).
FOLD_INDEXES = frozenset({"dialogs_conversation_id_idx"})
EXAMPLES_PER_TABLE = 5
BULK_TABLES = (messages, receipts)


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


async def key_bulk_tables(connection: asyncpg.Connection) -> None:
    """After the bulk load: drop repeated message and receipt keys (the earliest position
    stays, as with the upserts), then add the keys and turn the epoch ms into timestamps."""
    async with connection.transaction():
        for table in BULK_TABLES:
            key = [c.name for c in table.primary_key.columns]
            await connection.execute(q.drop_repeated_keys(table.name, key))
            await connection.execute(q.key_after_bulk_load(table.name, key))


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
