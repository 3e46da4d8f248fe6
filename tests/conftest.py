"""Test databases: real PostgreSQL, one fresh database per test, copied from a migrated template.

The server is the embedded one (pgserver, started once per session in a temporary directory)
unless RECORDER_TEST_DATABASE_URL names another server; that URL's database is only used to
create and drop the per-test databases.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from recorder.db import migrate
from recorder.db.target import DatabaseTarget, to_asyncpg_dsn
from tests.helpers import admin, with_database


@pytest.fixture(autouse=True)
def restore_root_logging() -> Iterator[None]:
    """`recorder.cli.main()` run in process points the root handler at the test's captured
    stderr; put the handlers back, so a later test never logs into a closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """An admin DSN for a server the tests may create databases on."""
    url = os.environ.get("RECORDER_TEST_DATABASE_URL")
    if url:
        yield to_asyncpg_dsn(url)
        return
    from recorder.db.embedded import EmbeddedPostgres

    state_dir = Path(tempfile.mkdtemp(prefix="recorder-test-"))
    embedded = EmbeddedPostgres(state_dir)
    dsn = asyncio.run(embedded.start())
    try:
        yield dsn
    finally:
        asyncio.run(embedded.stop())
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def template_database(server_dsn: str) -> Iterator[str]:
    """Name of a database migrated to head, used as the template for each test's database."""
    name = f"recorder_template_{os.getpid()}"

    async def create() -> None:
        await admin(server_dsn, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
        target = DatabaseTarget(dsn=with_database(server_dsn, name), embedded=False)
        await migrate.upgrade(target)

    asyncio.run(create())
    try:
        yield name
    finally:
        asyncio.run(admin(server_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
async def empty_database(server_dsn: str) -> AsyncIterator[DatabaseTarget]:
    """A fresh database with no schema at all."""
    name = f"recorder_test_{uuid.uuid4().hex[:12]}"
    await admin(server_dsn, f"CREATE DATABASE {name}")
    try:
        yield DatabaseTarget(dsn=with_database(server_dsn, name), embedded=False)
    finally:
        await admin(server_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def database(server_dsn: str, template_database: str) -> AsyncIterator[DatabaseTarget]:
    """A fresh database at the head revision."""
    name = f"recorder_test_{uuid.uuid4().hex[:12]}"
    await admin(server_dsn, f"CREATE DATABASE {name} TEMPLATE {template_database}")
    try:
        yield DatabaseTarget(dsn=with_database(server_dsn, name), embedded=False)
    finally:
        await admin(server_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def db(database: DatabaseTarget) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test database, for setting up and checking."""
    connection = await asyncpg.connect(database.dsn)
    try:
        yield connection
    finally:
        await connection.close()
