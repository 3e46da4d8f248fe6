"""The audit trail of reads (issue 17): who opened which conversation, searched, downloaded.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Append-only: a trigger refuses UPDATE and DELETE (the table's owner can still drop the
trigger; issue 19's chain covers the event log, not this table).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMPTZ = TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("at", TIMESTAMPTZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("credential", sa.Text),
        sa.Column("client", sa.Text),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("conversation_id", sa.Text),
        sa.Column("detail", JSONB),
        sa.Column("path", sa.Text),
    )
    op.create_index("audit_at_idx", "audit", ["at"])
    op.create_index("audit_conversation_id_idx", "audit", ["conversation_id"])
    op.execute("""
        CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit is append-only: % refused', TG_OP;
        END $$
    """)
    op.execute("""
        CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
        FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_append_only ON audit")
    op.execute("DROP FUNCTION audit_append_only()")
    op.drop_index("audit_conversation_id_idx", table_name="audit")
    op.drop_index("audit_at_idx", table_name="audit")
    op.drop_table("audit")
