"""Event log, its head counter, sessions, cursors, quarantine, positions and export runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMPTZ = postgresql.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("received_at", TIMESTAMPTZ, nullable=False),
        sa.Column("recorded_at", TIMESTAMPTZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("consumer_id", sa.Text, nullable=False),
        sa.Column("session_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("change_type", sa.Text),
        sa.Column("conversation_id", sa.Text),
        sa.Column("dialog_id", sa.Text),
        sa.Column("sequence", sa.BigInteger),
        sa.Column("originator_id", sa.Text),
        sa.Column("server_ts", TIMESTAMPTZ),
        sa.Column("dedupe_key", sa.LargeBinary, nullable=False),
        sa.Column("payload", postgresql.JSONB, nullable=False),
        sa.CheckConstraint(
            "kind IN ('conversation', 'messaging', 'other')", name="events_kind_check"
        ),
        sa.CheckConstraint("position > 0", name="events_position_check"),
    )
    op.create_index("events_dedupe_key_key", "events", ["dedupe_key"], unique=True)
    op.create_index(
        "events_conversation_position_idx", "events", ["conversation_id", "position"]
    )
    op.create_index(
        "events_received_at_brin", "events", ["received_at"], postgresql_using="brin"
    )

    op.create_table(
        "log_head",
        sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.CheckConstraint("id = 1", name="log_head_single_row"),
    )
    op.execute("INSERT INTO log_head (id, position) VALUES (1, 0)")

    op.create_table(
        "sessions",
        sa.Column("session_id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("consumer_id", sa.Text),
        sa.Column("identity_name", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("opened_at", TIMESTAMPTZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("closed_at", TIMESTAMPTZ),
        sa.Column("close_code", sa.Integer),
        sa.Column("close_reason", sa.Text),
        sa.Column("frames", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("events", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("duplicates", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("quarantined", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("last_frame_at", TIMESTAMPTZ),
        sa.Column("last_clock_rtt_ms", sa.Double),
        sa.Column("last_clock_at", TIMESTAMPTZ),
    )

    op.create_table(
        "dialog_cursors",
        sa.Column("dialog_id", sa.Text, primary_key=True),
        sa.Column("conversation_id", sa.Text),
        sa.Column("consumer_id", sa.Text, nullable=False),
        sa.Column("last_sequence", sa.BigInteger, nullable=False, server_default=sa.text("-1")),
        sa.Column("state", sa.Text),
        sa.Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=sa.text("now()")),
    )

    op.create_table(
        "quarantine",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("received_at", TIMESTAMPTZ, nullable=False),
        sa.Column("recorded_at", TIMESTAMPTZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("session_id", postgresql.UUID(as_uuid=True)),
        sa.Column("account_id", sa.Text),
        sa.Column("consumer_id", sa.Text),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("dedupe_key", sa.LargeBinary, nullable=False),
    )
    op.create_index("quarantine_dedupe_key_key", "quarantine", ["dedupe_key"], unique=True)

    op.create_table(
        "projection_positions",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=sa.text("now()")),
    )

    op.create_table(
        "export_runs",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("job", sa.Text, nullable=False),
        sa.Column("started_at", TIMESTAMPTZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("finished_at", TIMESTAMPTZ),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("from_position", sa.BigInteger, nullable=False),
        sa.Column("to_position", sa.BigInteger),
        sa.Column("rows", sa.BigInteger),
        sa.Column("path", sa.Text),
        sa.Column("error", sa.Text),
    )
    op.create_index("export_runs_job_started_idx", "export_runs", ["job", "started_at"])


def downgrade() -> None:
    for table in (
        "export_runs", "projection_positions", "quarantine", "dialog_cursors",
        "sessions", "log_head", "events",
    ):
        op.drop_table(table)
