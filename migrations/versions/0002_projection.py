"""Projection tables: conversations, dialogs, participants, messages, receipts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMPTZ = postgresql.TIMESTAMP(timezone=True)
JSONB = postgresql.JSONB


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("conversation_id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text),
        sa.Column("consumer_id", sa.Text),
        sa.Column("brand_id", sa.Text),
        sa.Column("skill_id", sa.Text),
        sa.Column("state", sa.Text),
        sa.Column("stage", sa.Text),
        sa.Column("close_reason", sa.Text),
        sa.Column("start_ts", TIMESTAMPTZ),
        sa.Column("end_ts", TIMESTAMPTZ),
        sa.Column("meta_data_last_update_ts", sa.BigInteger),
        sa.Column("state_position", sa.BigInteger),
        sa.Column("csat_rate", sa.Integer),
        sa.Column("csat_resolution_confirmation", sa.Boolean),
        sa.Column("csat_status", sa.Text),
        sa.Column("ttr_type", sa.Text),
        sa.Column("ttr_value", sa.BigInteger),
        sa.Column("effective_ttr", TIMESTAMPTZ),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("deleted_ts", sa.BigInteger),
        sa.Column("transfers", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("assignments", JSONB),
        sa.Column("details", JSONB),
        sa.Column("first_position", sa.BigInteger, nullable=False),
        sa.Column("last_position", sa.BigInteger, nullable=False),
        sa.Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=sa.text("now()")),
    )
    op.create_index("conversations_state_idx", "conversations", ["state"])
    op.create_index("conversations_consumer_id_idx", "conversations", ["consumer_id"])
    op.create_index("conversations_updated_at_idx", "conversations", ["updated_at"])

    op.create_table(
        "dialogs",
        sa.Column("dialog_id", sa.Text, primary_key=True),
        sa.Column("conversation_id", sa.Text, nullable=False),
        sa.Column("dialog_type", sa.Text),
        sa.Column("channel_type", sa.Text),
        sa.Column("state", sa.Text),
        sa.Column("creation_ts", TIMESTAMPTZ),
        sa.Column("end_ts", TIMESTAMPTZ),
        sa.Column("closed_by", sa.Text),
        sa.Column("closed_cause", sa.Text),
        sa.Column("meta_data_last_update_ts", sa.BigInteger),
        sa.Column("participants", JSONB),
    )
    op.create_index("dialogs_conversation_id_idx", "dialogs", ["conversation_id"])

    op.create_table(
        "participants",
        sa.Column("conversation_id", sa.Text, primary_key=True),
        sa.Column("participant_id", sa.Text, primary_key=True),
        sa.Column("role", sa.Text, primary_key=True),
        sa.Column("state", sa.Text),
    )

    op.create_table(
        "messages",
        sa.Column("dialog_id", sa.Text, primary_key=True),
        sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("conversation_id", sa.Text),
        sa.Column("originator_id", sa.Text),
        sa.Column("originator_role", sa.Text),
        sa.Column("event_type", sa.Text),
        sa.Column("content_type", sa.Text),
        sa.Column("text", sa.Text),
        sa.Column("rich_content", JSONB),
        sa.Column("file", JSONB),
        sa.Column("metadata", JSONB),
        sa.Column("audience", sa.Text),
        sa.Column("event", JSONB),
        sa.Column("server_ts", TIMESTAMPTZ),
        sa.Column("position", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "messages_conversation_dialog_sequence_idx",
        "messages",
        ["conversation_id", "dialog_id", "sequence"],
    )

    op.create_table(
        "receipts",
        sa.Column("dialog_id", sa.Text, primary_key=True),
        sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("participant_id", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, primary_key=True),
        sa.Column("server_ts", TIMESTAMPTZ),
        sa.Column("position", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in ("receipts", "messages", "participants", "dialogs", "conversations"):
        op.drop_table(table)
    # The projection is gone, so its saved position must not claim otherwise.
    op.execute("DELETE FROM projection_positions WHERE name = 'conversations'")
