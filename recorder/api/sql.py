"""SQL of the read API (recorder.api), in one place. Every value travels as a parameter.

Reads of the log are bounded by log_head in the same statement (as
recorder.eventlog.sql.READ_AFTER):
the head only moves when the rows below it have committed, so a page never skips a position
that a later page would then show.
"""

from __future__ import annotations

from recorder.db import schema
from recorder.eventlog.sql import UP_TO_HEAD, events_after, select_list

# -- conversations -------------------------------------------------------------------------------

CONVERSATION_COLUMNS = """
    conversation_id, account_id, consumer_id, brand_id, skill_id, state, stage, close_reason,
    start_ts, end_ts, csat_rate, csat_resolution_confirmation, csat_status, ttr_type, ttr_value,
    effective_ttr, deleted, transfers::text AS transfers, first_position, last_position,
    updated_at
"""

# Filters are chosen from this fixed set; recorder.api.routes numbers the placeholders.
CONVERSATION_FILTERS = {
    "state": "state = ${}",
    "stage": "stage = ${}",
    "consumer_id": "consumer_id = ${}",
    "skill_id": "skill_id = ${}",
    "updated_since": "updated_at >= ${}",
    "closed_from": "end_ts >= ${}",
    "closed_to": "end_ts < ${}",
    "after": "(updated_at, conversation_id) > (${}, ${})",
}

LIST_CONVERSATIONS = """
SELECT {columns}
FROM conversations
WHERE {where}
ORDER BY updated_at, conversation_id
LIMIT ${limit}
"""

GET_CONVERSATION = f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE conversation_id = $1"

# The whole record in one statement (one snapshot, one round trip): participants and dialogs
# come back as JSON arrays.
GET_CONVERSATION_RECORD = f"""
SELECT {CONVERSATION_COLUMNS},
    (SELECT coalesce(json_agg(json_build_object(
                'id', p.participant_id, 'role', p.role, 'state', p.state,
                'nickname', a.nickname, 'picture_url', a.picture_url)
            ORDER BY p.role, p.participant_id), '[]'::json)
     FROM participants p LEFT JOIN agents a ON a.agent_id = p.participant_id
     WHERE p.conversation_id = $1)::text AS participants_json,
    (SELECT json_build_object(
                'checked_at', r.checked_at, 'conversation_state', r.conversation_state,
                'history_records', r.history_records, 'matched', r.matched,
                'backfilled', r.backfilled, 'only_in_log', r.only_in_log,
                'content_differs', r.content_differs, 'history_partial', r.history_partial,
                'requests', r.requests, 'unreported', r.unreported, 'details', r.details)
     FROM reconciliations r WHERE r.conversation_id = $1)::text AS reconciliation_json,
    (SELECT coalesce(json_agg(json_build_object(
                'dialog_id', d.dialog_id, 'dialog_type', d.dialog_type,
                'channel_type', d.channel_type, 'state', d.state, 'creation_ts', d.creation_ts,
                'end_ts', d.end_ts, 'closed_by', d.closed_by, 'closed_cause', d.closed_cause,
                'participants', coalesce(d.participants, '[]'::jsonb))
            ORDER BY d.creation_ts NULLS LAST, d.dialog_id), '[]'::json)
     FROM dialogs d WHERE d.conversation_id = $1)::text AS dialogs_json
FROM conversations WHERE conversation_id = $1
"""

CONVERSATION_EXISTS = "SELECT EXISTS (SELECT 1 FROM conversations WHERE conversation_id = $1)"

# -- messages ------------------------------------------------------------------------------------

MESSAGES = """
SELECT m.dialog_id, m.sequence, m.originator_id, m.originator_role, m.event_type,
       m.content_type, m.text, m.rich_content::text AS rich_content, m.file::text AS file,
       m.metadata::text AS metadata, m.audience, m.event::text AS event, m.server_ts,
       m.position, a.nickname AS originator_nickname,
       a.picture_url AS originator_picture_url
FROM messages m LEFT JOIN agents a ON a.agent_id = m.originator_id
WHERE m.conversation_id = $1 AND (m.dialog_id, m.sequence) > ($2, $3)
ORDER BY m.dialog_id, m.sequence
LIMIT $4
"""

RECEIPTS = """
SELECT r.dialog_id, r.sequence, r.participant_id, r.status, r.server_ts
FROM receipts r
JOIN unnest($1::text[], $2::bigint[]) AS k(dialog_id, sequence)
  ON r.dialog_id = k.dialog_id AND r.sequence = k.sequence
ORDER BY r.dialog_id, r.sequence, r.server_ts NULLS LAST, r.participant_id, r.status
"""

# -- the log -------------------------------------------------------------------------------------

EVENT_COLUMNS = select_list(schema.PUBLIC_EVENT_COLUMNS, epoch_times=False)

EVENTS_AFTER = events_after(EVENT_COLUMNS)

CONVERSATION_EVENTS_AFTER = f"""
SELECT {EVENT_COLUMNS}
FROM events
WHERE conversation_id = $1
  AND position > $2 AND {UP_TO_HEAD}
ORDER BY position
LIMIT $3
"""

CONVERSATION_KNOWN = """
SELECT EXISTS (SELECT 1 FROM conversations WHERE conversation_id = $1)
    OR EXISTS (SELECT 1 FROM events WHERE conversation_id = $1)
"""

# -- health --------------------------------------------------------------------------------------

SCHEMA_REVISION = "SELECT version_num FROM alembic_version"

# -- audit (recorder.api.audit) ------------------------------------------------------------------

# One statement, one round trip: the CTE turns synchronous_commit off for this implicit
# transaction only, so the insert does not wait for its WAL flush.
AUDIT_INSERT = """
WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO audit (credential, client, action, conversation_id, detail, path)
SELECT $1, $2, $3, $4, $5::jsonb, $6 FROM relaxed
"""
