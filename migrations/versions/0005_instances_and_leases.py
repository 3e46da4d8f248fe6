"""Instances and leases: many `recorder run` instances share one log (issue 15).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

`instances`: one row per instance name and role (each role process heartbeats for itself,
so a dead `ingest` is not hidden by a live `project` of the same instance). `leases`: one row per
shared resource (`identity:<name>`, `projector`, `exports`): holder, fencing epoch (raised on
every change of holder) and expiry, all on the database's clock. `lease_moves`: who took what
from whom, for `recorder status` and the log.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TIMESTAMP

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMPTZ = TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("role", sa.Text, primary_key=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", TIMESTAMPTZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("heartbeat_at", TIMESTAMPTZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("stopped_at", TIMESTAMPTZ),
    )
    op.create_table(
        "leases",
        sa.Column("resource", sa.Text, primary_key=True),
        sa.Column("holder", sa.Text),
        sa.Column("epoch", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("expires_at", TIMESTAMPTZ),
        sa.Column("acquired_at", TIMESTAMPTZ),
        sa.Column("renewed_at", TIMESTAMPTZ),
    )
    op.create_table(
        "lease_moves",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("at", TIMESTAMPTZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("resource", sa.Text, nullable=False),
        sa.Column("from_instance", sa.Text),
        sa.Column("to_instance", sa.Text),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("lease_moves_at_idx", "lease_moves", ["at"])
    # An identity's cursors are read when its session opens, on whichever instance holds it.
    op.create_index("dialog_cursors_consumer_id_idx", "dialog_cursors", ["consumer_id"])


def downgrade() -> None:
    op.drop_index("dialog_cursors_consumer_id_idx", table_name="dialog_cursors")
    op.drop_index("lease_moves_at_idx", table_name="lease_moves")
    op.drop_table("lease_moves")
    op.drop_table("leases")
    op.drop_table("instances")
