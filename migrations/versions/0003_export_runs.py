"""Export bookkeeping: what each run covered, where its file is, and its manifest.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

`job` becomes nullable (NULL: an ad hoc `recorder export`, which checkpoints nothing).
A job's checkpoint is the greatest `to_position` of its `done` runs; the partial unique
indexes make a second committer of one window, or a second running run of one job, fail.
`conversations.last_position` gets an index: incremental conversation exports select by it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMPTZ = postgresql.TIMESTAMP(timezone=True)


def upgrade() -> None:
    op.alter_column("export_runs", "job", nullable=True)
    op.add_column("export_runs", sa.Column("kind", sa.Text, nullable=False,
                                           server_default="events"))
    op.add_column("export_runs", sa.Column("format", sa.Text, nullable=False,
                                           server_default="jsonl"))
    op.add_column("export_runs", sa.Column("scheduled_for", TIMESTAMPTZ))
    op.add_column("export_runs", sa.Column("host", sa.Text))
    op.add_column("export_runs", sa.Column("pid", sa.Integer))
    op.add_column("export_runs", sa.Column("sha256", sa.Text))
    op.add_column("export_runs", sa.Column("manifest", postgresql.JSONB))
    op.create_check_constraint(
        "export_runs_status_check", "export_runs",
        "status IN ('running', 'done', 'failed', 'abandoned')",
    )
    op.create_index(
        "export_runs_job_window_done_key", "export_runs", ["job", "from_position"],
        unique=True, postgresql_where=sa.text("status = 'done'"),
    )
    op.create_index(
        "export_runs_job_running_key", "export_runs", ["job"],
        unique=True, postgresql_where=sa.text("status = 'running' AND job IS NOT NULL"),
    )
    op.create_index("conversations_last_position_idx", "conversations", ["last_position"])


def downgrade() -> None:
    op.drop_index("conversations_last_position_idx", "conversations")
    op.drop_index("export_runs_job_running_key", "export_runs")
    op.drop_index("export_runs_job_window_done_key", "export_runs")
    op.drop_constraint("export_runs_status_check", "export_runs")
    for column in ("manifest", "sha256", "pid", "host", "scheduled_for", "format", "kind"):
        op.drop_column("export_runs", column)
    op.execute("DELETE FROM export_runs WHERE job IS NULL")
    op.alter_column("export_runs", "job", nullable=False)
