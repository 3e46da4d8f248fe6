"""Scheduled and ad hoc exports of the log and the projection to files (jsonl, csv, parquet).

jobs: `[[exports]]` settings and schedules; columns: what each kind's files hold;
sources: pages of rows from PostgreSQL as Arrow tables; writers: the three formats;
files: atomic publication, manifests and retention; runner: one run, exact and resumable;
scheduler: the daemon component; command: `recorder export`.
"""
