"""The scratch tables of `recorder rebuild`: create them, key them after the bulk load,
compare them with the live tables, and copy them over the live ones."""

from __future__ import annotations

import dataclasses

import asyncpg
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from recorder import projection_sql as q
from recorder.schema import PROJECTION_TABLES, messages, projection_positions, receipts

REBUILD_SCHEMA = "recorder_rebuild"
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

    statements = [f"DROP SCHEMA IF EXISTS {REBUILD_SCHEMA} CASCADE",
                  f"CREATE SCHEMA {REBUILD_SCHEMA}"]
    for table in (*PROJECTION_TABLES, projection_positions):
        # Unlogged: scratch space, which --swap copies into the (logged) live tables anyway.
        create = ddl(CreateTable(table)).replace("CREATE TABLE", "CREATE UNLOGGED TABLE", 1)
        statements.append(create)
        statements += [ddl(CreateIndex(i)) for i in table.indexes if i.name in FOLD_INDEXES]
        if table in BULK_TABLES:
            # Keyed after the bulk load (one sort beats a million index inserts), and times
            # loaded as the epoch ms the fold has (converted once, by the server, at the end).
            statements.append(f"ALTER TABLE {REBUILD_SCHEMA}.{table.name} "
                              f"DROP CONSTRAINT {table.name}_pkey, "
                              "ALTER COLUMN server_ts TYPE bigint USING NULL")
    async with admin.transaction():
        for statement in statements:
            await admin.execute(statement)


async def key_bulk_tables(connection: asyncpg.Connection) -> None:
    """After the bulk load: drop repeated message and receipt keys (the earliest position
    stays, as with the upserts), then add the keys and turn the epoch ms into timestamps."""
    async with connection.transaction():
        for table in BULK_TABLES:
            key = [c.name for c in table.primary_key.columns]
            name = f"{REBUILD_SCHEMA}.{table.name}"
            await connection.execute(f"""
                DELETE FROM {name} t
                USING (SELECT {", ".join(key)}, min(position) AS keep FROM {name}
                       GROUP BY {", ".join(key)} HAVING count(*) > 1) d
                WHERE {" AND ".join(f"t.{c} = d.{c}" for c in key)} AND t.position <> d.keep
            """)
            to_timestamp = q.ms_to_timestamp("server_ts")
            await connection.execute(
                f"ALTER TABLE {name} ADD PRIMARY KEY ({', '.join(key)}), "
                f"ALTER COLUMN server_ts TYPE timestamptz USING {to_timestamp}"
            )


async def compare(admin: asyncpg.Connection, live_schema: str) -> dict[str, TableDifference]:
    """Row-for-row differences (all columns but the volatile ones), by table; {} if none."""
    differences: dict[str, TableDifference] = {}
    for table in PROJECTION_TABLES:
        cols = ", ".join(c.name for c in table.columns if c.name not in VOLATILE_COLUMNS)
        keys = ", ".join(c.name for c in table.primary_key.columns)
        row = await admin.fetchrow(f"""
            WITH l AS (SELECT {cols} FROM {ident(live_schema)}.{table.name}),
                 r AS (SELECT {cols} FROM {REBUILD_SCHEMA}.{table.name}),
                 only_l AS (SELECT * FROM l EXCEPT ALL SELECT * FROM r),
                 only_r AS (SELECT * FROM r EXCEPT ALL SELECT * FROM l)
            SELECT (SELECT count(*) FROM l) AS live_rows, (SELECT count(*) FROM r) AS rebuilt_rows,
                   (SELECT count(*) FROM only_l) AS only_live,
                   (SELECT count(*) FROM only_r) AS only_rebuilt,
                   ARRAY(SELECT DISTINCT concat_ws('/', {keys}) AS k
                         FROM (SELECT {keys} FROM only_l UNION ALL SELECT {keys} FROM only_r) d
                         ORDER BY k LIMIT {EXAMPLES_PER_TABLE}) AS examples
        """)
        assert row is not None
        if row["only_live"] or row["only_rebuilt"]:
            differences[str(table.name)] = TableDifference(
                row["live_rows"], row["rebuilt_rows"], row["only_live"], row["only_rebuilt"],
                list(row["examples"]),
            )
    return differences


async def swap_in(admin: asyncpg.Connection, live_schema: str) -> None:
    """Replace the live rows with the rebuilt ones; the caller holds the transaction."""
    live = ident(live_schema)
    names = ", ".join(f"{live}.{t.name}" for t in PROJECTION_TABLES)
    await admin.execute(f"TRUNCATE {names}")
    for table in PROJECTION_TABLES:
        cols = ", ".join(c.name for c in table.columns)
        await admin.execute(
            f"INSERT INTO {live}.{table.name} ({cols}) "
            f"SELECT {cols} FROM {REBUILD_SCHEMA}.{table.name}"
        )


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
