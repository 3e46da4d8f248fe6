"""Agent profiles and reconciliation with LivePerson's history (issue 16).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

Two new event kinds: `agent` (a fetched agent public profile) and `reconciliation` (the result
of checking a conversation against the Consumer Messaging History API). The kind check is
replaced NOT VALID and validated apart, so a large log is scanned without blocking the writer
(VALIDATE takes SHARE UPDATE EXCLUSIVE). Two projection tables show their newest state.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMPTZ = TIMESTAMP(timezone=True)
KINDS_BEFORE = "kind IN ('conversation', 'messaging', 'other')"
KINDS_AFTER = "kind IN ('conversation', 'messaging', 'agent', 'reconciliation', 'other')"


def _replace_kind_check(condition: str) -> None:
    op.execute("ALTER TABLE events DROP CONSTRAINT events_kind_check")
    op.execute(f"ALTER TABLE events ADD CONSTRAINT events_kind_check CHECK ({condition}) NOT VALID")
    op.execute("ALTER TABLE events VALIDATE CONSTRAINT events_kind_check")


def upgrade() -> None:
    _replace_kind_check(KINDS_AFTER)
    op.create_table(
        "agents",
        sa.Column("agent_id", sa.Text, primary_key=True),
        sa.Column("known", sa.Boolean, nullable=False),
        sa.Column("nickname", sa.Text),
        sa.Column("full_name", sa.Text),
        sa.Column("picture_url", sa.Text),
        sa.Column("employee_id", sa.Text),
        sa.Column("profile", JSONB),
        sa.Column("fetched_at", TIMESTAMPTZ, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "reconciliations",
        sa.Column("conversation_id", sa.Text, primary_key=True),
        sa.Column("consumer_id", sa.Text),
        sa.Column("checked_at", TIMESTAMPTZ, nullable=False),
        sa.Column("conversation_state", sa.Text),
        sa.Column("history_records", sa.Integer, nullable=False),
        sa.Column("matched", sa.Integer, nullable=False),
        sa.Column("backfilled", sa.Integer, nullable=False),
        sa.Column("only_in_log", sa.Integer, nullable=False),
        sa.Column("content_differs", sa.Integer, nullable=False),
        sa.Column("history_partial", sa.Boolean, nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("unreported", sa.Boolean, nullable=False),
        sa.Column("details", JSONB),
        sa.Column("position", sa.BigInteger, nullable=False),
    )
    op.create_index("reconciliations_checked_at_idx", "reconciliations", ["checked_at"])


def downgrade() -> None:
    op.drop_index("reconciliations_checked_at_idx", table_name="reconciliations")
    op.drop_table("reconciliations")
    op.drop_table("agents")
    # The log is append-only: refuse rather than delete recorded events.
    found = op.get_bind().execute(sa.text(
        "SELECT count(*) FROM events WHERE kind IN ('agent', 'reconciliation')")).scalar()
    if found:
        raise RuntimeError(f"{found} agent/reconciliation events are recorded: cannot downgrade")
    _replace_kind_check(KINDS_BEFORE)
