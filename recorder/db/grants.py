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

from recorder.config import Settings
from recorder.db import migrate, sql
from recorder.db.target import DatabaseTarget, connect, open_database
from recorder.errors import ConfigError, RecorderError
from recorder.logs import event, register_secret

log = logging.getLogger(__name__)

#: What analysts may read: the event log, the projection, and the analyst views.
READABLE = (
    "events", "conversations", "dialogs", "participants", "messages", "receipts", "agents",
    "reconciliations", "audit", "v_messages", "v_conversation_facts", "v_daily",
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
        return str(await connection.fetchval(sql.quote(len(values)), template, *values))

    try:
        async with connection.transaction():
            existing = await connection.fetchrow(sql.ROLE_PRIVILEGES, role)
            owner = await connection.fetchval(sql.TABLES_OWNER)
            if role == owner or (existing is not None and any(existing)):
                raise GrantError(
                    f"role {role!r} owns the tables or is privileged (superuser, createrole or "
                    "bypassrls): it cannot be made read-only; choose another role")
            options = "LOGIN" if login else "NOLOGIN"
            if existing is None:
                statement = await quoted(sql.CREATE_ROLE.format(options=options), role)
                await run(statement)
            elif login:
                await run(await quoted(sql.ALTER_ROLE_LOGIN, role))
            if password is not None:
                await run(await quoted(sql.ALTER_ROLE_PASSWORD, role, password),
                          await quoted(sql.ALTER_ROLE_PASSWORD_SHOWN, role))
            database = await connection.fetchval(sql.CURRENT_DATABASE)
            schema = await connection.fetchval(sql.CURRENT_SCHEMA)
            await run(await quoted(sql.GRANT_CONNECT, database, role))
            await run(await quoted(sql.GRANT_USAGE, schema, role))
            await run(await quoted(sql.REVOKE_TABLES, schema, role))
            await run(await quoted(sql.REVOKE_SEQUENCES, schema, role))
            await run(await quoted(sql.REVOKE_CREATE, schema, role))
            for relation in READABLE:
                await run(await quoted(sql.GRANT_SELECT, schema, relation, role))
            await run(await quoted(sql.READ_ONLY_DEFAULT, role, database))
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
