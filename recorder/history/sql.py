"""SQL of recorder.history: what reconciliation reads of the log and the projection."""

from __future__ import annotations

AGENTS_FETCHED = """
SELECT agent_id, extract(epoch FROM fetched_at)::double precision AS fetched_at FROM agents
"""

CONVERSATION = """
SELECT conversation_id, consumer_id, state, stage FROM conversations WHERE conversation_id = $1
"""

# Where the projection has not seen the conversation (yet), its log still names the identity.
CONVERSATION_CONSUMER = """
SELECT consumer_id FROM events WHERE conversation_id = $1 ORDER BY position LIMIT 1
"""

# The sequenced messaging events of a conversation as the log holds them (live or backfilled).
LOG_MESSAGES = """
SELECT dialog_id, sequence, change_type, originator_id,
       round(extract(epoch FROM server_ts) * 1000)::bigint AS server_ms,
       (payload -> 'event')::text AS event
FROM events
WHERE conversation_id = $1 AND kind = 'messaging' AND sequence IS NOT NULL
  AND dialog_id IS NOT NULL
"""

# Its dialogs: the projection's (with type and times), and any the cursors know besides.
DIALOGS = """
SELECT dialog_id, dialog_type,
       round(extract(epoch FROM creation_ts) * 1000)::bigint AS creation_ms,
       round(extract(epoch FROM end_ts) * 1000)::bigint AS end_ms
FROM dialogs WHERE conversation_id = $1
UNION ALL
SELECT c.dialog_id, NULL, NULL, NULL FROM dialog_cursors c
WHERE c.conversation_id = $1
  AND NOT EXISTS (SELECT 1 FROM dialogs d WHERE d.dialog_id = c.dialog_id)
"""

# Closed conversations of these consumers, quiet for $2 seconds, that were never checked
# closed, changed since their last check, or were checked against a partial history more
# than $3 seconds ago. "Closed" as the subscriber reads it: stage CLOSE (the survey is over
# too), or state CLOSE where no stage is given.
DUE_CLOSED = """
SELECT c.conversation_id, c.consumer_id
FROM conversations c
LEFT JOIN reconciliations r ON r.conversation_id = c.conversation_id
WHERE c.consumer_id = ANY($1::text[])
  AND (c.stage = 'CLOSE' OR (c.stage IS NULL AND c.state = 'CLOSE'))
  AND c.updated_at < now() - make_interval(secs => $2)
  AND (r.conversation_id IS NULL
       OR r.conversation_state IS DISTINCT FROM 'CLOSE'
       OR c.last_position > r.position
       OR (r.history_partial AND r.checked_at < now() - make_interval(secs => $3)))
ORDER BY c.updated_at
LIMIT $4
"""

# Of these conversations (the history's list), those the socket never reported: no
# conversation event in the log, and no check of a closed one against a whole history.
UNREPORTED = """
SELECT c.id FROM unnest($1::text[]) AS c(id)
WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.conversation_id = c.id
                  AND e.kind = 'conversation')
  AND NOT EXISTS (SELECT 1 FROM reconciliations r WHERE r.conversation_id = c.id
                  AND r.conversation_state = 'CLOSE' AND NOT r.history_partial)
"""

OPEN_OF_CONSUMER = """
SELECT conversation_id FROM conversations
WHERE consumer_id = $1 AND state = 'OPEN' AND NOT deleted
ORDER BY updated_at
"""

# `recorder reconcile --since`: conversations started, or changed, since then.
SINCE = """
SELECT conversation_id FROM conversations
WHERE start_ts >= $1 OR updated_at >= $1 OR end_ts >= $1
ORDER BY updated_at, conversation_id
"""

# `recorder reconcile` with no selection: every closed conversation due, whatever its age.
ALL_DUE = """
SELECT c.conversation_id
FROM conversations c
LEFT JOIN reconciliations r ON r.conversation_id = c.conversation_id
WHERE (c.stage = 'CLOSE' OR (c.stage IS NULL AND c.state = 'CLOSE'))
  AND (r.conversation_id IS NULL OR r.conversation_state IS DISTINCT FROM 'CLOSE'
       OR c.last_position > r.position OR r.history_partial)
ORDER BY c.updated_at, c.conversation_id
"""

# -- recorder status -----------------------------------------------------------------------------

RECONCILIATION_TOTALS = """
SELECT count(*) AS conversations,
       coalesce(sum(history_records), 0) AS history_records,
       coalesce(sum(matched), 0) AS matched,
       coalesce(sum(backfilled), 0) AS backfilled,
       coalesce(sum(only_in_log), 0) AS only_in_log,
       coalesce(sum(content_differs), 0) AS content_differs,
       count(*) FILTER (WHERE history_partial) AS partial,
       count(*) FILTER (WHERE unreported) AS unreported,
       coalesce(sum(requests), 0) AS requests,
       max(checked_at) AS last_checked_at,
       (SELECT count(*) FROM conversations c
        WHERE (c.stage = 'CLOSE' OR (c.stage IS NULL AND c.state = 'CLOSE'))
          AND NOT EXISTS (SELECT 1 FROM reconciliations x
                          WHERE x.conversation_id = c.conversation_id
                            AND x.conversation_state = 'CLOSE')) AS closed_unchecked,
       (SELECT count(*) FILTER (WHERE known) FROM agents) AS agents_known,
       (SELECT count(*) FILTER (WHERE NOT known) FROM agents) AS agents_unknown
FROM reconciliations
"""

# -- sessions (recorder.history.sessions) ---------------------------------------------------------

ENSURE_REST_SESSION = """
INSERT INTO sessions (session_id, account_id, consumer_id, identity_name, url, opened_at,
                      closed_at, close_reason)
VALUES ($1::uuid, $2, $3, $4, $5, now(), now(), 'REST: agent profiles and messaging history')
ON CONFLICT (session_id) DO NOTHING
"""
