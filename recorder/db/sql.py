"""SQL about the database itself: leadership locks, server settings, the embedded server's
database, and the reader role's grants. Templates with `%I`/`%L` are filled in by the server's
`format()` (QUOTE), so identifiers and literals are always quoted by PostgreSQL."""

TRY_LEADER_LOCK = "SELECT pg_try_advisory_lock($1)"

LEADER_LOCK_HOLDER = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND granted
  AND ((classid::bigint << 32) | objid::bigint) = $1
"""

SERVER_SETTINGS = """
SELECT name, setting FROM pg_settings
WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'server_version')
"""

# -- the embedded server (run through its psql, before any asyncpg connection) ------------------

DATABASE_EXISTS = "SELECT 1 FROM pg_database WHERE datname = '{name}';"
CREATE_DATABASE = "CREATE DATABASE {name};"

# -- grant-reader ------------------------------------------------------------------------------


def quote(count: int) -> str:
    """`format()` of a template and `count` text values, each a parameter."""
    placeholders = ", ".join(f"${n}::text" for n in range(2, count + 2))
    return f"SELECT format($1::text, {placeholders})"


ROLE_PRIVILEGES = "SELECT rolsuper, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = $1"
TABLES_OWNER = (
    "SELECT tableowner FROM pg_tables WHERE tablename = 'events' "
    "AND schemaname = current_schema()"
)
CURRENT_DATABASE = "SELECT current_database()"
CURRENT_SCHEMA = "SELECT current_schema()"

CREATE_ROLE = "CREATE ROLE %I {options}"
ALTER_ROLE_LOGIN = "ALTER ROLE %I LOGIN"
ALTER_ROLE_PASSWORD = "ALTER ROLE %I PASSWORD %L"
ALTER_ROLE_PASSWORD_SHOWN = "ALTER ROLE %I PASSWORD '********'"
GRANT_CONNECT = "GRANT CONNECT ON DATABASE %I TO %I"
GRANT_USAGE = "GRANT USAGE ON SCHEMA %I TO %I"
REVOKE_TABLES = "REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I"
REVOKE_SEQUENCES = "REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM %I"
REVOKE_CREATE = "REVOKE CREATE ON SCHEMA %I FROM %I"
GRANT_SELECT = "GRANT SELECT ON %I.%I TO %I"
READ_ONLY_DEFAULT = "ALTER ROLE %I IN DATABASE %I SET default_transaction_read_only = on"
