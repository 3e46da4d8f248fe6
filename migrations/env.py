"""Alembic environment. Works three ways:

- from `recorder migrate` (recorder.db.migrate), which hands over an open connection;
- from the `alembic` CLI in a checkout, taking the URL from recorder's configuration
  (RECORDER_DATABASE_URL, or the embedded server in RECORDER_STATE_DIR);
- offline (`alembic upgrade head --sql`), printing SQL.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from recorder.db.schema import metadata

config = context.config
target_metadata = metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_settings() -> None:
    import asyncpg

    from recorder.config import load_settings
    from recorder.db.target import open_database

    async with open_database(load_settings()) as target:
        dsn = target.dsn

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(dsn)

        engine = create_async_engine("postgresql+asyncpg://", async_creator=connect)
        try:
            async with engine.connect() as connection:
                await connection.run_sync(_configure)
                await connection.commit()
        finally:
            await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url="postgresql://", target_metadata=target_metadata, literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    _configure(connection)
else:
    asyncio.run(_run_with_settings())
