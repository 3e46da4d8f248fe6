"""Database errors from `recorder migrate` and `recorder status`, as a user sees them.

They pass through SQLAlchemy (alembic runs on it), whose `str()` of an error adds the SQL
statement, its parameters and a "Background on this error at https://sqlalche.me/..." line.
The user gets one `recorder: …` line with what the server said, and nothing of those.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from recorder.db import migrate
from recorder.db.target import DatabaseTarget
from recorder.errors import DatabaseError
from tests.helpers import admin, with_database

ROOT = Path(__file__).resolve().parents[2]


def recorder(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m recorder ARGS` as a real process, with no RECORDER_* settings around it."""
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith("RECORDER_") and key not in ("STATE_DIRECTORY",
                                                                  "JOURNAL_STREAM")}
    return subprocess.run([sys.executable, "-m", "recorder", "--log-level", "error", *args],
                          cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120,
                          check=False)


def the_line(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 1 and a single `recorder: …` line, with no trace of SQLAlchemy's formatting."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("recorder: "), line
    for leak in ("Background on this error", "sqlalche.me", "[SQL", "[parameters", "sqlalchemy"):
        assert leak not in line, line
    return line


def test_a_database_that_does_not_exist(server_dsn: str) -> None:
    name = f"recorder_missing_{uuid.uuid4().hex[:8]}"
    line = the_line(recorder("--database-url", with_database(server_dsn, name), "migrate"))
    assert line.endswith(f'database "{name}" does not exist'), line
    assert "cannot connect to PostgreSQL" in line


async def test_a_table_in_the_way(empty_database: DatabaseTarget) -> None:
    connection = await asyncpg.connect(empty_database.dsn)
    try:
        await connection.execute("CREATE TABLE events (anything int)")
    finally:
        await connection.close()

    # In process: the message, and the driver's error kept as the cause.
    with pytest.raises(DatabaseError) as caught:
        await migrate.upgrade(empty_database)
    message = str(caught.value)
    assert message == (f"database error on {empty_database.describe()}: "
                       'relation "events" already exists'), message
    assert caught.value.__cause__ is not None

    # As the command: the same, on one line (the statement was a multi-line CREATE TABLE).
    line = the_line(recorder("--database-url", empty_database.dsn, "migrate"))
    assert line == f"recorder: {message}", line


@pytest.fixture
async def weak_role(server_dsn: str) -> AsyncIterator[str]:
    """A login role with no privilege on any table."""
    role = f"recorder_weak_{uuid.uuid4().hex[:8]}"
    await admin(server_dsn, f"CREATE ROLE {role} LOGIN PASSWORD 'weak-password'")
    try:
        yield role
    finally:
        await admin(server_dsn, f"DROP ROLE IF EXISTS {role}")


def as_role(dsn: str, role: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}:weak-password@{host}"))


def test_a_role_without_privileges(database: DatabaseTarget, weak_role: str) -> None:
    url = as_role(database.dsn, weak_role)
    for command in ("status", "migrate"):
        line = the_line(recorder("--database-url", url, command))
        assert line.endswith("permission denied for table alembic_version"), line
        assert "weak-password" not in line
