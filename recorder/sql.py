"""Every SQL statement recorder runs on its hot paths, in one place."""

# recorded_at is clock_timestamp(), read after the lock, so it follows commit order.
# Positions come from the one-row log_head counter inside the writer's transaction, under
# LOCK TABLE events IN EXCLUSIVE MODE: contiguous, in commit order, and a rollback burns none.
LOCK_EVENTS = "LOCK TABLE events IN EXCLUSIVE MODE"

# One statement per batch: drop keys already stored, take a block of positions, insert.
# The input is already free of in-batch duplicates and ordered as received. There is no
# ON CONFLICT: under the lock a conflict cannot happen, and if it ever did, the unique
# violation rolls the whole batch back instead of leaving a hole in the positions.
APPEND_BATCH = """
WITH input AS (
    SELECT *
    FROM unnest(
        $1::double precision[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
        $7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[],
        $12::double precision[], $13::bytea[], $14::text[]
    ) WITH ORDINALITY AS t(
        received_at, account_id, consumer_id, session_id, kind, type,
        change_type, conversation_id, dialog_id, sequence, originator_id,
        server_ts, dedupe_key, payload, ord
    )
), fresh AS (
    SELECT i.*, row_number() OVER (ORDER BY i.ord) AS n
    FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.dedupe_key = i.dedupe_key)
), head AS (
    UPDATE log_head SET position = position + (SELECT count(*) FROM fresh)
    WHERE id = 1
    RETURNING position
)
INSERT INTO events (
    position, received_at, recorded_at, account_id, consumer_id, session_id, kind, type,
    change_type, conversation_id, dialog_id, sequence, originator_id, server_ts,
    dedupe_key, payload
)
SELECT
    head.position - (SELECT count(*) FROM fresh) + f.n,
    to_timestamp(f.received_at), clock_timestamp(), f.account_id, f.consumer_id, f.session_id::uuid,
    f.kind, f.type, f.change_type, f.conversation_id, f.dialog_id, f.sequence,
    f.originator_id, to_timestamp(f.server_ts), f.dedupe_key, f.payload::jsonb
FROM fresh f CROSS JOIN head
ORDER BY f.n
RETURNING position, dedupe_key
"""

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

LEADER_LOCK_HOLDER = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND granted
  AND ((classid::bigint << 32) | objid::bigint) = $1
"""

QUARANTINE_COUNT = "SELECT count(*) FROM quarantine"

TRY_LEADER_LOCK = "SELECT pg_try_advisory_lock($1)"

# Reads see only rows at or below the head, in the same snapshot: a reader never sees n+1
# before n, because the head only moves when the rows below it commit.
EVENT_COLUMNS = """
    position, extract(epoch FROM received_at)::double precision AS received_at,
    extract(epoch FROM recorded_at)::double precision AS recorded_at,
    account_id, consumer_id, session_id::text AS session_id, kind, type, change_type,
    conversation_id, dialog_id, sequence, originator_id,
    extract(epoch FROM server_ts)::double precision AS server_ts, dedupe_key,
    payload::text AS payload
"""

READ_AFTER = f"""
SELECT {EVENT_COLUMNS}
FROM events
WHERE position > $1 AND position <= (SELECT position FROM log_head WHERE id = 1)
ORDER BY position
LIMIT $2
"""

PROJECTION_POSITIONS = "SELECT name, position FROM projection_positions ORDER BY name"

SERVER_SETTINGS = """
SELECT name, setting FROM pg_settings
WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'server_version')
"""

SESSION_OPENED = """
INSERT INTO sessions (session_id, account_id, consumer_id, identity_name, url, opened_at)
VALUES ($1::uuid, $2, $3, $4, $5, to_timestamp($6))
ON CONFLICT (session_id) DO NOTHING
"""

SESSION_CLOSED = """
UPDATE sessions
SET closed_at = now(), close_code = $2, close_reason = $3, frames = $4, events = $5,
    last_clock_rtt_ms = $6, last_clock_at = CASE WHEN $6::double precision IS NULL
                                                 THEN last_clock_at ELSE now() END
WHERE session_id = $1::uuid
"""
