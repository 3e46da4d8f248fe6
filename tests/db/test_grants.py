"""`recorder grant-reader`: a role that reads the documented tables and views, and nothing else."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from recorder.cli import main
from recorder.db.grants import READABLE, GrantError, grant_reader
from recorder.db.target import DatabaseTarget
from tests.helpers import message_event
from tests.projection_helpers import append


def as_role(dsn: str, role: str, password: str | None = None) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    auth = role if password is None else f"{role}:{password}"
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}"))


@pytest.fixture
async def role(db: asyncpg.Connection) -> AsyncIterator[str]:
    name = f"analyst_{uuid.uuid4().hex[:10]}"
    yield name
    if await db.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
        await db.execute(f'DROP OWNED BY "{name}"')  # roles outlive the test database
        await db.execute(f'DROP ROLE "{name}"')


async def test_the_reader_selects_what_is_documented_and_cannot_write(
    database: DatabaseTarget, db: asyncpg.Connection, role: str,
) -> None:
    await append(database, [message_event("conv-1", n) for n in range(3)])
    statements = await grant_reader(database, role, login=True)
    assert any(s.startswith("CREATE ROLE") for s in statements)
    reader = await asyncpg.connect(as_role(database.dsn, role))
    try:
        for relation in READABLE:
            await reader.fetch(f"SELECT * FROM {relation} LIMIT 1")
        assert await reader.fetchval("SELECT count(*) FROM events") == 3
        assert await reader.fetchval("SHOW default_transaction_read_only") == "on"
        # The role may turn that off itself: the grants are what must stop it.
        await reader.execute("SET default_transaction_read_only = off")
        for statement in (
            "INSERT INTO events (position, received_at, account_id, consumer_id, session_id, "
            "kind, type, dedupe_key, payload) VALUES (99, now(), 'a', 'c', gen_random_uuid(), "
            "'other', 't', '\\x00', '{}')",
            "DELETE FROM events",
            "UPDATE events SET type = 'x'",
            "TRUNCATE events",
            "SELECT * FROM log_head",
            "SELECT * FROM sessions",
            "SELECT * FROM export_runs",
            "UPDATE log_head SET position = 0",
            "CREATE TABLE mine (x int)",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.execute(statement)
    finally:
        await reader.close()
    assert await db.fetchval("SELECT count(*) FROM events") == 3


async def test_granting_again_is_harmless_and_the_cli_masks_the_password(
    database: DatabaseTarget, db: asyncpg.Connection, role: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret-pass-9d2\n")
    monkeypatch.setenv("RECORDER_DATABASE_URL", database.dsn)
    first = ["grant-reader", role, "--login", "--password-file", str(secret)]
    assert await asyncio.to_thread(main, first) == 0
    # Idempotent: the role exists, and is granted again.
    assert await asyncio.to_thread(main, ["grant-reader", role]) == 0
    out = capsys.readouterr()
    assert "s3cret-pass-9d2" not in out.out + out.err
    assert "PASSWORD '********'" in out.out
    assert await db.fetchval("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", role)


async def test_a_privileged_role_or_the_owner_is_refused(
    database: DatabaseTarget, db: asyncpg.Connection,
) -> None:
    owner = await db.fetchval("SELECT current_user")
    with pytest.raises(GrantError):
        await grant_reader(database, owner)
