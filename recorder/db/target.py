"""Which PostgreSQL server recorder talks to, and the URL forms each library wants."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import asyncpg

from recorder.config import Settings
from recorder.db.embedded import EmbeddedPostgres
from recorder.errors import DatabaseError
from recorder.logs import event

log = logging.getLogger(__name__)


#: Startup parameters a transaction-pooling PgBouncer keeps per client (it sets them on
#: whichever server connection serves the client); any other one it refuses at connect.
POOLER_TRACKED_SETTINGS = frozenset(
    {"application_name", "client_encoding", "datestyle", "timezone",
     "standard_conforming_strings"})


@dataclasses.dataclass(frozen=True)
class DatabaseTarget:
    """A reachable database: `dsn` for asyncpg, `sqlalchemy_url` for SQLAlchemy and alembic.

    `pooled`: the URL reaches PostgreSQL through a transaction-pooling PgBouncer
    (RECORDER_DATABASE_POOLING=transaction): no named prepared statements (PgBouncer 1.18
    cannot route them) and only the session settings PgBouncer tracks."""

    dsn: str
    embedded: bool
    pooled: bool = False

    def connect_options(self, **options: Any) -> dict[str, Any]:
        """asyncpg connect/create_pool keyword arguments for this target."""
        if self.pooled:
            options["statement_cache_size"] = 0
            settings = options.get("server_settings")
            if settings:
                options["server_settings"] = {
                    k: v for k, v in settings.items() if k in POOLER_TRACKED_SETTINGS}
        return options

    @property
    def sqlalchemy_url(self) -> str:
        return to_sqlalchemy_url(self.dsn)

    def describe(self) -> str:
        kind = "embedded PostgreSQL" if self.embedded else "PostgreSQL"
        return f"{kind} {mask_url(self.dsn)}"

    def __repr__(self) -> str:
        return f"DatabaseTarget({self.describe()!r})"


def to_asyncpg_dsn(url: str) -> str:
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql+asyncpg", "postgres"):
        scheme = "postgresql"
    return f"{scheme}://{rest}"


def to_sqlalchemy_url(url: str) -> str:
    return "postgresql+asyncpg://" + to_asyncpg_dsn(url).split("://", 1)[1]


def mask_url(url: str) -> str:
    """The URL with any password (in the user part or the query) replaced, safe to print."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{netloc}")
    if parts.query:
        pairs = [
            (key, "***" if key.lower() in ("password", "passfile") else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(pairs, safe="/*"))
    # Joined by hand: urlunsplit drops an empty authority ("postgresql:///db" -> ":/db").
    query = f"?{parts.query}" if parts.query else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}{query}{fragment}"


def url_passwords(url: str) -> list[str]:
    """The password(s) in a database URL (user part and `?password=`), as written and decoded."""
    try:
        parts = urlsplit(url)
        found = [parts.password] if parts.password else []
    except ValueError:
        return []
    found += [value for key, value in parse_qsl(parts.query) if key.lower() == "password"]
    return [form for value in found for form in {value, unquote(value)}]


@contextlib.asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[DatabaseTarget]:
    """The configured server, or the embedded one (started now, released on exit)."""
    if settings.database_url is not None:
        target = DatabaseTarget(dsn=to_asyncpg_dsn(settings.database_url.reveal()), embedded=False,
                                pooled=settings.database_pooling == "transaction")
        log.info("using %s", target.describe(), extra=event("database.target.selected"))
        yield target
        return
    embedded = EmbeddedPostgres(settings.state_dir)
    dsn = await embedded.start()
    try:
        yield DatabaseTarget(dsn=dsn, embedded=True)
    finally:
        await embedded.stop()


async def connect(target: DatabaseTarget | str, **kwargs: Any) -> asyncpg.Connection:
    """One asyncpg connection; connection failures become DatabaseError without the password."""
    dsn = target.dsn if isinstance(target, DatabaseTarget) else target
    if isinstance(target, DatabaseTarget):
        kwargs = target.connect_options(**kwargs)
    try:
        return await asyncpg.connect(dsn, **kwargs)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseError(f"cannot connect to {mask_url(dsn)}: {exc}") from exc
