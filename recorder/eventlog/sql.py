"""SQL of the event log's tables (events, log_head, dialog_cursors, sessions, quarantine).

The writer's statements, the one read-after-position query and the select list every reader of
the log shares, and the read-only health queries `recorder status` runs over these tables: the
statements live with the tables they touch, whoever calls them.
"""

from recorder.db import schema

# The append path, in the writer's transaction, under LOCK_EVENTS (taken once a batch has
# events): TAKE_POSITIONS, then a binary COPY of the fresh rows into COPY_TABLE, then
# ADVANCE_CURSORS. Positions come from the one-row log_head counter inside that transaction,
# under LOCK TABLE events IN EXCLUSIVE MODE: contiguous, in commit order, and a rollback
# (a COPY that fails included) burns none.
LOCK_EVENTS = "LOCK TABLE events IN EXCLUSIVE MODE"

#: The channel the writer notifies on commit (recorder.eventlog.wakeups listens).
COMMIT_CHANNEL = "recorder_log"

# One statement per batch, after the lock: find the keys already stored, take one block of
# positions for the rest, and read the time. $1 is the batch's keys, already free of in-batch
# duplicates. Returns the new head (the block is its last cardinality($1) - stored positions),
# recorded_at, and the stored keys, which the COPY leaves out.
#
# recorded_at is clock_timestamp() read here, once per batch, after the lock, and sent back
# with every row of the COPY: the next batch cannot read the clock before this one commits and
# releases the lock, so recorded_at follows commit order (rows of one batch share it).
#
# It also queues the commit notification (recorder.eventlog.wakeups): NOTIFY is transactional,
# delivered at commit and only if the batch commits, so it rides along here instead of costing
# a round trip of its own.
TAKE_POSITIONS = f"""
WITH stored AS (
    SELECT dedupe_key FROM events WHERE dedupe_key = ANY($1::bytea[])
), head AS (
    UPDATE log_head
    SET position = position + cardinality($1::bytea[]) - (SELECT count(*) FROM stored)
    WHERE id = 1
    RETURNING position
)
SELECT head.position AS head, clock_timestamp() AS recorded_at,
       ARRAY(SELECT dedupe_key FROM stored) AS stored,
       pg_notify('{COMMIT_CHANNEL}', head.position::text) IS NULL AS notified
FROM head
"""

# The COPY of fresh rows (asyncpg's copy_records_to_table writes the statement, binary format):
# every column of the table in table order, derived from the one column list. There is no
# ON CONFLICT in a COPY: under the lock a conflict cannot happen, and if it ever did, the
# unique violation rolls the whole batch back instead of leaving a hole in the positions.
COPY_TABLE: str = schema.events.name
COPY_COLUMNS: tuple[str, ...] = schema.EVENT_COLUMNS

HEAD = "SELECT position FROM log_head WHERE id = 1"

INSERT_QUARANTINE = """
INSERT INTO quarantine (received_at, session_id, account_id, consumer_id, raw, error, dedupe_key)
VALUES (to_timestamp($1), $2::uuid, $3, $4, $5, $6, $7)
ON CONFLICT (dedupe_key) DO NOTHING
"""

# After a lost commit acknowledgement: which of a batch's keys did the failed attempt store?
STORED_SINCE = """
SELECT dedupe_key, position FROM events
WHERE dedupe_key = ANY($1::bytea[]) AND position > $2
"""

# Reads see only rows at or below the head, in the same snapshot: a reader never sees n+1
# before n, because the head only moves when the rows below it commit.
#: How a column leaves the database for Python: uuid and jsonb as text (decoded once, by the
#: reader that needs them), timestamps as epoch seconds where the reader wants floats.
_AS_TEXT = {name: f"{name}::text AS {name}" for name in ("session_id", "payload")}
_AS_EPOCH = {
    name: f"extract(epoch FROM {name})::double precision AS {name}"
    for name in ("received_at", "recorded_at", "server_ts")
}


def select_list(columns: tuple[str, ...], *, epoch_times: bool) -> str:
    """The select list of log reads: `columns` with the casts every reader of the log shares."""
    casts = {**_AS_TEXT, **_AS_EPOCH} if epoch_times else _AS_TEXT
    return ", ".join(casts.get(name, name) for name in columns)


EVENT_COLUMNS = select_list(schema.EVENT_COLUMNS, epoch_times=True)

#: Every read of the log stays at or below the head, evaluated in the same statement.
UP_TO_HEAD = f"position <= ({HEAD})"



def events_after(columns: str) -> str:
    """The one read-after-position query: `$2` events past position `$1`, up to the head."""
    return f"""
SELECT {columns}
FROM events
WHERE position > $1 AND {UP_TO_HEAD}
ORDER BY position
LIMIT $2
"""


READ_AFTER = events_after(EVENT_COLUMNS)

# One idempotent statement for opening, progress and closing: a session whose first write
# failed (the database was down) still gets its whole row on a later one.
SESSION_UPSERT = """
INSERT INTO sessions (
    session_id, account_id, consumer_id, identity_name, url, opened_at, frames, events,
    duplicates, quarantined, last_frame_at, last_clock_rtt_ms, last_clock_at,
    closed_at, close_code, close_reason
) VALUES (
    $1::uuid, $2, $3, $4, $5, to_timestamp($6), $7, $8, $9, $10, to_timestamp($11),
    $12::double precision, CASE WHEN $12::double precision IS NULL THEN NULL ELSE now() END,
    to_timestamp($13), $14, $15
)
ON CONFLICT (session_id) DO UPDATE SET
    frames = EXCLUDED.frames, events = EXCLUDED.events, duplicates = EXCLUDED.duplicates,
    quarantined = EXCLUDED.quarantined, last_frame_at = EXCLUDED.last_frame_at,
    last_clock_rtt_ms = coalesce(EXCLUDED.last_clock_rtt_ms, sessions.last_clock_rtt_ms),
    last_clock_at = coalesce(EXCLUDED.last_clock_at, sessions.last_clock_at),
    closed_at = coalesce(sessions.closed_at, EXCLUDED.closed_at),
    close_code = coalesce(sessions.close_code, EXCLUDED.close_code),
    close_reason = coalesce(sessions.close_reason, EXCLUDED.close_reason)
"""

# Cursors move in the same transaction as the events they cover: a cursor never runs ahead
# of what is stored.
ADVANCE_CURSORS = """
INSERT INTO dialog_cursors (dialog_id, conversation_id, consumer_id, last_sequence, updated_at)
SELECT *, now() FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
ON CONFLICT (dialog_id) DO UPDATE
SET last_sequence = GREATEST(dialog_cursors.last_sequence, EXCLUDED.last_sequence),
    conversation_id = COALESCE(dialog_cursors.conversation_id, EXCLUDED.conversation_id),
    updated_at = now()
"""

# What an identity ($2) resumes from when its session opens, on whichever instance holds it
# now (dialog_cursors_consumer_id_idx): the dialogs of conversations the projection shows
# open, and those with events stored within the last $1 seconds (which covers what the
# projection has not caught up with).
LOAD_CONSUMER_CURSORS = """
WITH open AS (
    SELECT conversation_id FROM conversations WHERE state = 'OPEN' OR stage = 'OPEN'
)
SELECT d.dialog_id, d.conversation_id, d.consumer_id, d.last_sequence,
       d.conversation_id IN (SELECT conversation_id FROM open) AS open
FROM dialog_cursors d
WHERE d.consumer_id = $2
  AND (d.updated_at > now() - make_interval(secs => $1)
       OR d.conversation_id IN (SELECT conversation_id FROM open))
"""

# The newest conversation metadata time (epoch ms) the projection holds for a consumer: the
# lower bound of the next ExConversations snapshot, less a margin. A lagging projection gives
# an older time, so a wider snapshot, never a narrower one.
CONSUMER_LAST_METADATA_MS = """
SELECT max(meta_data_last_update_ts) FROM conversations WHERE consumer_id = $1
"""

# -- health of the log, for `recorder status` (read only) ----------------------------------------

QUARANTINE_COUNT = "SELECT count(*) FROM quarantine"

# The latest websocket session of each identity, with what its sessions stored (REST
# sessions, recorder.history.sessions, have http(s) URLs and are left out).
IDENTITY_STATUS = """
WITH latest AS (
    SELECT DISTINCT ON (identity_name) identity_name, consumer_id, session_id, opened_at,
           closed_at, close_code, close_reason, last_frame_at,
           extract(epoch FROM now() - coalesce(last_frame_at, opened_at)) AS idle_s
    FROM sessions WHERE url !~ '^https?:' ORDER BY identity_name, opened_at DESC
), totals AS (
    SELECT identity_name, count(*) AS sessions, sum(duplicates) AS duplicates,
           sum(quarantined) AS quarantined, max(last_frame_at) AS last_frame_at
    FROM sessions WHERE url !~ '^https?:' GROUP BY identity_name
), stored AS (
    SELECT s.identity_name, count(*) AS events
    FROM events e JOIN sessions s ON s.session_id = e.session_id
    WHERE s.url !~ '^https?:'
    GROUP BY s.identity_name
)
SELECT l.identity_name, l.consumer_id, l.session_id::text AS session_id, l.opened_at,
       l.closed_at, l.close_code, l.close_reason, t.last_frame_at, l.idle_s, t.sessions,
       coalesce(st.events, 0) AS events, t.duplicates, t.quarantined
FROM latest l JOIN totals t USING (identity_name) LEFT JOIN stored st USING (identity_name)
ORDER BY l.identity_name
"""

# Holes in a dialog's sequence numbers, with the session that delivered the event after the
# hole (the one connected when it happened). Holes are expected upstream (events the consumer
# may not see); they are reported, not repaired.
SEQUENCE_HOLES = """
SELECT x.dialog_id, x.conversation_id, coalesce(x.previous + 1, 0) AS first_missing,
       x.sequence - 1 AS last_missing, x.session_id::text AS session_id, s.identity_name AS identity
FROM (
    SELECT dialog_id, conversation_id, sequence, session_id,
           lag(sequence) OVER (PARTITION BY dialog_id ORDER BY sequence) AS previous
    FROM events WHERE kind = 'messaging' AND sequence IS NOT NULL
) x LEFT JOIN sessions s ON s.session_id = x.session_id
WHERE x.sequence > coalesce(x.previous + 1, 0)
ORDER BY x.dialog_id, x.sequence
LIMIT $1
"""
