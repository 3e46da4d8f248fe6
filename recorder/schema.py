"""The database schema as SQLAlchemy Core metadata.

Migrations are written by hand in migrations/versions; `alembic check` (run by the tests)
proves they produce exactly this metadata.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID

metadata = MetaData()

TIMESTAMPTZ = TIMESTAMP(timezone=True)

events = Table(
    "events",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("received_at", TIMESTAMPTZ, nullable=False),
    Column("recorded_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    Column("account_id", Text, nullable=False),
    Column("consumer_id", Text, nullable=False),
    Column("session_id", UUID(as_uuid=True), nullable=False),
    Column("kind", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("change_type", Text),
    Column("conversation_id", Text),
    Column("dialog_id", Text),
    Column("sequence", BigInteger),
    Column("originator_id", Text),
    Column("server_ts", TIMESTAMPTZ),
    Column("dedupe_key", LargeBinary, nullable=False),
    Column("payload", JSONB, nullable=False),
    CheckConstraint("kind IN ('conversation', 'messaging', 'other')", name="events_kind_check"),
    CheckConstraint("position > 0", name="events_position_check"),
    Index("events_dedupe_key_key", "dedupe_key", unique=True),
    Index("events_conversation_position_idx", "conversation_id", "position"),
    Index("events_received_at_brin", "received_at", postgresql_using="brin"),
)

log_head = Table(
    "log_head",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("position", BigInteger, nullable=False),
    CheckConstraint("id = 1", name="log_head_single_row"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("session_id", UUID(as_uuid=True), primary_key=True),
    Column("account_id", Text, nullable=False),
    Column("consumer_id", Text),
    Column("identity_name", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("opened_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    Column("closed_at", TIMESTAMPTZ),
    Column("close_code", Integer),
    Column("close_reason", Text),
    Column("frames", BigInteger, nullable=False, server_default=text("0")),
    Column("events", BigInteger, nullable=False, server_default=text("0")),
    Column("duplicates", BigInteger, nullable=False, server_default=text("0")),
    Column("quarantined", BigInteger, nullable=False, server_default=text("0")),
    Column("last_frame_at", TIMESTAMPTZ),
    Column("last_clock_rtt_ms", Double),
    Column("last_clock_at", TIMESTAMPTZ),
)

dialog_cursors = Table(
    "dialog_cursors",
    metadata,
    Column("conversation_id", Text, primary_key=True),
    Column("dialog_id", Text, primary_key=True),
    Column("consumer_id", Text, nullable=False),
    Column("last_sequence", BigInteger, nullable=False, server_default=text("-1")),
    Column("state", Text),
    Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("received_at", TIMESTAMPTZ, nullable=False),
    Column("recorded_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    Column("session_id", UUID(as_uuid=True)),
    Column("account_id", Text),
    Column("consumer_id", Text),
    Column("raw", LargeBinary, nullable=False),
    Column("error", Text, nullable=False),
    Column("dedupe_key", LargeBinary, nullable=False),
    Index("quarantine_dedupe_key_key", "dedupe_key", unique=True),
)

projection_positions = Table(
    "projection_positions",
    metadata,
    Column("name", Text, primary_key=True),
    Column("position", BigInteger, nullable=False, server_default=text("0")),
    Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
)

export_runs = Table(
    "export_runs",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("job", Text, nullable=False),
    Column("started_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    Column("finished_at", TIMESTAMPTZ),
    Column("status", Text, nullable=False),
    Column("from_position", BigInteger, nullable=False),
    Column("to_position", BigInteger),
    Column("rows", BigInteger),
    Column("path", Text),
    Column("error", Text),
    Index("export_runs_job_started_idx", "job", "started_at"),
)
