"""The SQL of exports, in one place. Data comes out by COPY ... TO STDOUT (CSV), which
recorder.exports.sources turns into typed Arrow tables (asyncpg inlines the $n arguments of a
COPY as quoted literals); bookkeeping lives in export_runs."""

from __future__ import annotations

from recorder.db import schema

#: Advisory lock class of export jobs (two-key form: apart from the writer's one-key lock).
EXPORT_LOCK_CLASS = 0x72656378  # "recx"

TRY_JOB_LOCK = "SELECT pg_try_advisory_lock($1::int, hashtext($2))"
JOB_UNLOCK = "SELECT pg_advisory_unlock($1::int, hashtext($2))"

PROJECTION_POSITION = (
    "SELECT coalesce((SELECT position FROM projection_positions WHERE name = $1), 0)"
)

# -- data ----------------------------------------------------------------------------------------

# Positions up to a head read beforehand: every row at or below it has committed.
EVENTS = f"""
SELECT {", ".join(schema.PUBLIC_EVENT_COLUMNS)}
FROM events
WHERE position > $1 AND position <= $2
  AND ($3::timestamptz IS NULL OR received_at >= $3)
  AND ($4::timestamptz IS NULL OR received_at < $4)
ORDER BY position
"""

# The record of GET /conversations/{id}, flat, in (last_position, conversation_id) pages.
CONVERSATIONS = """
SELECT c.conversation_id, c.account_id, c.consumer_id, c.brand_id, c.skill_id, c.state,
       c.stage, c.close_reason, c.start_ts, c.end_ts, c.csat_rate,
       c.csat_resolution_confirmation, c.csat_status, c.ttr_type, c.ttr_value, c.effective_ttr,
       c.deleted,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'id', p.participant_id, 'role', p.role, 'state', p.state,
                   'nickname', a.nickname, 'picture_url', a.picture_url)
               ORDER BY p.role, p.participant_id), '[]'::jsonb)
        FROM participants p LEFT JOIN agents a ON a.agent_id = p.participant_id
        WHERE p.conversation_id = c.conversation_id) AS participants,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'dialog_id', d.dialog_id, 'dialog_type', d.dialog_type,
                   'channel_type', d.channel_type, 'state', d.state,
                   'creation_ts', d.creation_ts, 'end_ts', d.end_ts, 'closed_by', d.closed_by,
                   'closed_cause', d.closed_cause,
                   'participants', coalesce(d.participants, '[]'::jsonb))
               ORDER BY d.creation_ts NULLS LAST, d.dialog_id), '[]'::jsonb)
        FROM dialogs d WHERE d.conversation_id = c.conversation_id) AS dialogs,
       c.transfers, c.first_position, c.last_position, c.updated_at
FROM conversations c
WHERE c.last_position > $1 AND c.last_position <= $2
  AND (c.last_position, c.conversation_id) > ($3, $4)
  AND ($5::timestamptz IS NULL OR c.updated_at >= $5)
  AND ($6::timestamptz IS NULL OR c.updated_at < $6)
ORDER BY c.last_position, c.conversation_id
LIMIT $7
"""

# How many rows a window holds, for the progress display.
COUNT_CONVERSATIONS = """
SELECT count(*) FROM conversations WHERE last_position > $1 AND last_position <= $2
"""
COUNT_CLOSED_CONVERSATIONS = COUNT_CONVERSATIONS.rstrip() + " AND state = 'CLOSE'\n"

CLOSED_CONVERSATIONS = """
SELECT conversation_id, end_ts, last_position
FROM conversations
WHERE state = 'CLOSE' AND last_position > $1 AND last_position <= $2
  AND (last_position, conversation_id) > ($3, $4)
  AND ($5::timestamptz IS NULL OR end_ts >= $5) AND ($6::timestamptz IS NULL OR end_ts < $6)
ORDER BY last_position, conversation_id
LIMIT $7
"""

# The messages of a page of conversations, each in reading order: dialogs by creation, then
# sequence (split per conversation by recorder.exports.sources.transcripts).
TRANSCRIPTS = """
SELECT m.conversation_id, m.dialog_id, d.dialog_type, m.sequence, m.server_ts, m.originator_id,
       m.originator_role, m.event_type, m.content_type, m.text, m.rich_content, m.file,
       m.metadata, m.audience, m.event,
       (SELECT jsonb_agg(jsonb_build_object(
                   'participant_id', r.participant_id, 'status', r.status,
                   'server_ts', r.server_ts)
               ORDER BY r.server_ts NULLS LAST, r.participant_id, r.status)
        FROM receipts r WHERE r.dialog_id = m.dialog_id AND r.sequence = m.sequence) AS receipts,
       m.position
FROM messages m
LEFT JOIN dialogs d ON d.dialog_id = m.dialog_id
WHERE m.conversation_id = ANY($1::text[])
ORDER BY m.conversation_id, d.creation_ts NULLS LAST, m.dialog_id, m.sequence
"""

# -- export_runs ---------------------------------------------------------------------------------

CHECKPOINT = """
SELECT coalesce(max(to_position), 0) AS position,
       (SELECT kind FROM export_runs WHERE job = $1 AND status = 'done'
        ORDER BY id DESC LIMIT 1) AS kind
FROM export_runs WHERE job = $1 AND status = 'done'
"""

# The newest attempt after the newest done run, if it did not finish: its window is redone.
INTERRUPTED = """
SELECT id, status, from_position, to_position, path, kind, format
FROM export_runs
WHERE job = $1 AND status IN ('running', 'failed')
  AND id > coalesce((SELECT max(id) FROM export_runs WHERE job = $1 AND status = 'done'), 0)
ORDER BY id DESC
LIMIT 1
"""

ABANDON = """
UPDATE export_runs SET status = 'abandoned', finished_at = coalesce(finished_at, now())
WHERE job = $1 AND status = 'running'
"""

# Asked under the job's lock, so a `running` run is a crashed one: only `done` takes a slot.
SLOT_TAKEN = """
SELECT EXISTS (SELECT 1 FROM export_runs
               WHERE job = $1 AND scheduled_for >= $2 AND status = 'done')
"""

START_RUN = """
INSERT INTO export_runs (job, status, kind, format, from_position, to_position, path,
                         scheduled_for, host, pid)
VALUES ($1, 'running', $2, $3, $4, $5, $6, $7, $8, $9)
RETURNING id
"""

FINISH_RUN = """
UPDATE export_runs
SET status = 'done', finished_at = now(), rows = $2, sha256 = $3, manifest = $4::jsonb
WHERE id = $1 AND status = 'running'
"""

FAIL_RUN = """
UPDATE export_runs SET status = 'failed', finished_at = now(), error = $2
WHERE id = $1 AND status = 'running'
"""

# recorder status: each job's newest run and its checkpoint.
LAST_RUNS = """
SELECT DISTINCT ON (r.job) r.job, r.status, r.kind, r.format, r.from_position, r.to_position,
       r.rows, r.path, r.started_at, r.finished_at, r.error,
       (SELECT max(d.to_position) FROM export_runs d
        WHERE d.job = r.job AND d.status = 'done') AS checkpoint
FROM export_runs r
WHERE r.job IS NOT NULL
ORDER BY r.job, r.id DESC
"""
