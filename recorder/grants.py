"""`recorder grant-reader ROLE`: a role that can SELECT the documented tables and views
(docs/sql.md) and nothing else.

Run it again after `recorder migrate`: a new view is granted only when named here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import asyncpg

from recorder import migrate
from recorder.config import Settings
from recorder.database import DatabaseTarget, connect, open_database
from recorder.errors import ConfigError, RecorderError
from recorder.logs import event, register_secret

log = logging.getLogger(__name__)

#: What analysts may read: the event log, the projection, and the analyst views.
READABLE = (
    "events", "conversations", "dialogs", "participants", "messages", "receipts",
    "v_messages", "v_conversation_facts", "v_daily",
)


class GrantError(RecorderError):
    """The role cannot be made a read-only reader."""


async def grant_reader(
    target: DatabaseTarget, role: str, *, login: bool = False, password: str | None = None,
) -> list[str]:
    """Create the role (or reuse it) and leave it able to SELECT `READABLE` only.

    Returns the statements run, with any password masked.
    """
    await migrate.require_current_schema(target)
    connection = await connect(target)
    done: list[str] = []

    async def run(statement: str, shown: str | None = None) -> None:
        await connection.execute(statement)
        done.append(shown or statement)

    async def quoted(template: str, *values: str) -> str:
        """The statement with identifiers (%I) and literals (%L) quoted by the server."""
        placeholders = ", ".join(f"${n}::text" for n in range(2, len(values) + 2))
        return str(await connection.fetchval(f"SELECT format($1::text, {placeholders})",
                                             template, *values))

    try:
        async with connection.transaction():
            existing = await connection.fetchrow(
                "SELECT rolsuper, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = $1",
                role)
            owner = await connection.fetchval(
                "SELECT tableowner FROM pg_tables WHERE tablename = 'events' "
                "AND schemaname = current_schema()")
            if role == owner or (existing is not None and any(existing)):
                raise GrantError(
                    f"role {role!r} owns the tables or is privileged (superuser, createrole or "
                    "bypassrls): it cannot be made read-only; choose another role")
            options = "LOGIN" if login else "NOLOGIN"
            if existing is None:
                statement = await quoted(f"CREATE ROLE %I {options}", role)
                await run(statement)
            elif login:
                await run(await quoted("ALTER ROLE %I LOGIN", role))
            if password is not None:
                await run(await quoted("ALTER ROLE %I PASSWORD %L", role, password),
                          await quoted("ALTER ROLE %I PASSWORD '********'", role))
            database = await connection.fetchval("SELECT current_database()")
            schema = await connection.fetchval("SELECT current_schema()")
            await run(await quoted("GRANT CONNECT ON DATABASE %I TO %I", database, role))
            await run(await quoted("GRANT USAGE ON SCHEMA %I TO %I", schema, role))
            await run(await quoted("REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I", schema, role))
            await run(await quoted("REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM %I",
                                   schema, role))
            await run(await quoted("REVOKE CREATE ON SCHEMA %I FROM %I", schema, role))
            for relation in READABLE:
                await run(await quoted("GRANT SELECT ON %I.%I TO %I", schema, relation, role))
            await run(await quoted(
                "ALTER ROLE %I IN DATABASE %I SET default_transaction_read_only = on",
                role, database))
    except asyncpg.InsufficientPrivilegeError as exc:
        raise GrantError(f"not allowed to grant to {role!r}: {exc}") from exc
    finally:
        await connection.close()
    log.info("role %s may read %s", role, ", ".join(READABLE),
             extra=event("grants.reader.granted"))
    return done


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("role", metavar="ROLE", help="the role to create or grant to")
    parser.add_argument("--login", action="store_true",
                        help="let the role log in (a new role is NOLOGIN otherwise)")
    parser.add_argument("--password-file", metavar="FILE",
                        help="set the role's password from this file (never printed)")


def read_password(path: str) -> str:
    try:
        password = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError("--password-file", f"cannot be read: {exc.strerror}") from exc
    if not password:
        raise ConfigError("--password-file", "is empty")
    register_secret(password)
    return password


async def grant_reader_command(settings: Settings, args: argparse.Namespace) -> int:
    password = read_password(args.password_file) if args.password_file else None
    async with open_database(settings) as target:
        statements = await grant_reader(target, args.role, login=args.login, password=password)
    for statement in statements:
        sys.stdout.write(statement + ";\n")
    return 0
