"""The database schema as SQLAlchemy Core metadata.

Migrations are written by hand in migrations/versions; `alembic check` (run by the tests)
proves they produce exactly this metadata.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
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
    CheckConstraint(
        "kind IN ('conversation', 'messaging', 'agent', 'reconciliation', 'other')",
        name="events_kind_check",
    ),
    CheckConstraint("position > 0", name="events_position_check"),
    Index("events_dedupe_key_key", "dedupe_key", unique=True),
    Index("events_conversation_position_idx", "conversation_id", "position"),
    Index("events_received_at_brin", "received_at", postgresql_using="brin"),
)

#: The events columns, in table order: the one list the rest derives from or is checked against.
EVENT_COLUMNS: tuple[str, ...] = tuple(column.name for column in events.columns)
#: What readers of the log are shown: every column but the internal dedupe key.
PUBLIC_EVENT_COLUMNS: tuple[str, ...] = tuple(c for c in EVENT_COLUMNS if c != "dedupe_key")

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
    Column("dialog_id", Text, primary_key=True),
    Column("conversation_id", Text),
    Column("consumer_id", Text, nullable=False),
    Column("last_sequence", BigInteger, nullable=False, server_default=text("-1")),
    Column("state", Text),
    Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    Index("dialog_cursors_consumer_id_idx", "consumer_id"),
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
    Column("job", Text),  # NULL: an ad hoc `recorder export` (no checkpoint)
    Column("started_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    Column("finished_at", TIMESTAMPTZ),
    Column("status", Text, nullable=False),
    Column("from_position", BigInteger, nullable=False),  # exclusive
    Column("to_position", BigInteger),  # inclusive
    Column("rows", BigInteger),
    Column("path", Text),
    Column("error", Text),
    Column("kind", Text, nullable=False, server_default=text("'events'")),
    Column("format", Text, nullable=False, server_default=text("'jsonl'")),
    Column("scheduled_for", TIMESTAMPTZ),  # the schedule's slot; NULL when run by hand
    Column("host", Text),
    Column("pid", Integer),
    Column("sha256", Text),
    Column("manifest", JSONB),
    CheckConstraint(
        "status IN ('running', 'done', 'failed', 'abandoned')", name="export_runs_status_check"
    ),
    Index("export_runs_job_started_idx", "job", "started_at"),
    Index(
        "export_runs_job_window_done_key", "job", "from_position",
        unique=True, postgresql_where=text("status = 'done'"),
    ),
    Index(
        "export_runs_job_running_key", "job",
        unique=True, postgresql_where=text("status = 'running' AND job IS NOT NULL"),
    ),
)

# The projection (design.md section 3): current state folded from the log by recorder.projection.
# Times are timestamptz from the payload's epoch ms (0 or absent → NULL); the *_ts bigints are
# the platform's versions, kept raw because last-writer-wins compares them.
instances = Table(
    "instances",
    metadata,
    Column("name", Text, primary_key=True),
    Column("role", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    Column("heartbeat_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    Column("stopped_at", TIMESTAMPTZ),
)

leases = Table(
    "leases",
    metadata,
    Column("resource", Text, primary_key=True),
    Column("holder", Text),
    Column("epoch", BigInteger, nullable=False, server_default=text("0")),
    Column("expires_at", TIMESTAMPTZ),
    Column("acquired_at", TIMESTAMPTZ),
    Column("renewed_at", TIMESTAMPTZ),
)

lease_moves = Table(
    "lease_moves",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    Column("resource", Text, nullable=False),
    Column("from_instance", Text),
    Column("to_instance", Text),
    Column("epoch", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Index("lease_moves_at_idx", "at"),
)

conversations = Table(
    "conversations",
    metadata,
    Column("conversation_id", Text, primary_key=True),
    Column("account_id", Text),
    Column("consumer_id", Text),  # the recording identity (JWT sub) of the first event seen
    Column("brand_id", Text),
    Column("skill_id", Text),
    Column("state", Text),
    Column("stage", Text),
    Column("close_reason", Text),
    Column("start_ts", TIMESTAMPTZ),
    Column("end_ts", TIMESTAMPTZ),
    Column("meta_data_last_update_ts", BigInteger),  # LWW version of the state shown
    Column("state_position", BigInteger),  # log position of that UPSERT; NULL: none seen yet
    Column("csat_rate", Integer),
    Column("csat_resolution_confirmation", Boolean),
    Column("csat_status", Text),
    Column("ttr_type", Text),
    Column("ttr_value", BigInteger),
    Column("effective_ttr", TIMESTAMPTZ),
    Column("deleted", Boolean, nullable=False, server_default=text("false")),
    Column("deleted_ts", BigInteger),
    Column("transfers", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("assignments", JSONB),  # [[ts, position, skill, [agents]], ...]: input of transfers
    Column("details", JSONB),  # conversationDetails of the winning UPSERT, verbatim
    Column("first_position", BigInteger, nullable=False),
    Column("last_position", BigInteger, nullable=False),
    Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    Index("conversations_state_idx", "state"),
    Index("conversations_consumer_id_idx", "consumer_id"),
    Index("conversations_updated_at_idx", "updated_at"),
    Index("conversations_last_position_idx", "last_position"),
    Index("conversations_start_ts_idx", "start_ts"),
    Index("conversations_start_day_idx", text("((timezone('UTC', start_ts))::date)")),
)

dialogs = Table(
    "dialogs",
    metadata,
    Column("dialog_id", Text, primary_key=True),
    Column("conversation_id", Text, nullable=False),
    Column("dialog_type", Text),
    Column("channel_type", Text),
    Column("state", Text),
    Column("creation_ts", TIMESTAMPTZ),
    Column("end_ts", TIMESTAMPTZ),
    Column("closed_by", Text),
    Column("closed_cause", Text),
    Column("meta_data_last_update_ts", BigInteger),
    Column("participants", JSONB),  # participantsDetails as [{id, role, state}]
    Index("dialogs_conversation_id_idx", "conversation_id"),
)

participants = Table(
    "participants",
    metadata,
    Column("conversation_id", Text, primary_key=True),
    Column("participant_id", Text, primary_key=True),
    Column("role", Text, primary_key=True),
    Column("state", Text),
)

messages = Table(
    "messages",
    metadata,
    Column("dialog_id", Text, primary_key=True),
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    Column("conversation_id", Text),
    Column("originator_id", Text),
    Column("originator_role", Text),
    Column("event_type", Text),
    Column("content_type", Text),
    Column("text", Text),
    Column("rich_content", JSONB),
    Column("file", JSONB),
    Column("metadata", JSONB),
    Column("audience", Text),
    Column("event", JSONB),  # the raw event, only for types the projection does not interpret
    Column("server_ts", TIMESTAMPTZ),
    Column("position", BigInteger, nullable=False),
    # INCLUDE: index-only scans for v_conversation_facts (migration 0004)
    Index("messages_conversation_dialog_sequence_idx", "conversation_id", "dialog_id", "sequence",
          postgresql_include=["event_type", "originator_role", "server_ts"]),
)

receipts = Table(
    "receipts",
    metadata,
    Column("dialog_id", Text, primary_key=True),
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    Column("participant_id", Text, primary_key=True),
    Column("status", Text, primary_key=True),
    Column("server_ts", TIMESTAMPTZ),
    Column("position", BigInteger, nullable=False),
)

# An agent's public profile, from the newest `agent` event (issue 16). `known` is false where
# LivePerson answered 404; the other columns are then null.
agents = Table(
    "agents",
    metadata,
    Column("agent_id", Text, primary_key=True),
    Column("known", Boolean, nullable=False),
    Column("nickname", Text),
    Column("full_name", Text),
    Column("picture_url", Text),
    Column("employee_id", Text),
    Column("profile", JSONB),  # the profile as LivePerson answered it
    Column("fetched_at", TIMESTAMPTZ, nullable=False),
    Column("position", BigInteger, nullable=False),
)

# The newest check of a conversation against LivePerson's history (`reconciliation` events).
reconciliations = Table(
    "reconciliations",
    metadata,
    Column("conversation_id", Text, primary_key=True),
    Column("consumer_id", Text),
    Column("checked_at", TIMESTAMPTZ, nullable=False),
    Column("conversation_state", Text),  # the conversation's state when it was checked
    Column("history_records", Integer, nullable=False),
    Column("matched", Integer, nullable=False),
    Column("backfilled", Integer, nullable=False),
    Column("only_in_log", Integer, nullable=False),
    Column("content_differs", Integer, nullable=False),
    Column("history_partial", Boolean, nullable=False),
    Column("requests", Integer, nullable=False),
    Column("unreported", Boolean, nullable=False),  # the socket never reported it
    Column("details", JSONB),  # keys of what was only in the log or differs (bounded lists)
    Column("position", BigInteger, nullable=False),
    Index("reconciliations_checked_at_idx", "checked_at"),
)

# Who read what (recorder.api.audit, migration 0007): append-only, a trigger refuses UPDATE
# and DELETE.
audit = Table(
    "audit",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("at", TIMESTAMPTZ, nullable=False, server_default=text("now()")),
    Column("credential", Text),  # the name of the token presented; NULL without auth
    Column("client", Text),
    Column("action", Text, nullable=False),
    Column("conversation_id", Text),
    Column("detail", JSONB),
    Column("path", Text),
    Index("audit_at_idx", "at"),
    Index("audit_conversation_id_idx", "conversation_id"),
)

PROJECTION_TABLES = (conversations, dialogs, participants, messages, receipts, agents,
                     reconciliations)
