"""Analyst views over the projection (docs/sql.md), and the indexes that keep them fast.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

The views read the projection tables only, never the log, so a day of v_conversation_facts
costs the index scans of that day's conversations and their messages. They are plain views:
always current with the projector, nothing to refresh.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

V_MESSAGES = """
CREATE VIEW v_messages AS
SELECT m.conversation_id, m.dialog_id, d.dialog_type, m.sequence,
       m.originator_id AS author_id, m.originator_role AS author_role,
       m.content_type, m.text, m.server_ts, r.first_read_at, r.first_accepted_at, m.position
FROM messages m
LEFT JOIN dialogs d ON d.dialog_id = m.dialog_id
LEFT JOIN LATERAL (
    -- one look at the message's receipts, by anyone but its author
    SELECT min(r.server_ts) FILTER (WHERE r.status = 'READ') AS first_read_at,
           min(r.server_ts) FILTER (WHERE r.status = 'ACCEPT') AS first_accepted_at
    FROM receipts r
    WHERE r.dialog_id = m.dialog_id AND r.sequence = m.sequence
      AND r.participant_id IS DISTINCT FROM m.originator_id
) r ON true
WHERE m.event_type IN ('ContentEvent', 'RichContentEvent')
"""

V_CONVERSATION_FACTS = """
CREATE VIEW v_conversation_facts AS
SELECT c.conversation_id, c.account_id, c.brand_id, c.consumer_id, c.skill_id,
       c.state, c.stage, c.start_ts, c.end_ts,
       (timezone('UTC', c.start_ts))::date AS start_day,
       c.close_reason, c.csat_rate, c.csat_status, c.csat_resolution_confirmation,
       c.ttr_type, c.ttr_value, c.effective_ttr,
       f.first_consumer_message_at, a.first_agent_message_at,
       extract(epoch FROM a.first_agent_message_at - f.first_consumer_message_at)::double precision
           AS first_response_s,
       a.first_agent_message_at - f.first_consumer_message_at
           <= make_interval(secs => c.ttr_value) AS first_response_within_ttr,
       coalesce(f.consumer_messages, 0) AS consumer_messages,
       coalesce(f.agent_messages, 0) AS agent_messages,
       coalesce(f.other_messages, 0) AS other_messages,
       (SELECT count(DISTINCT t -> 'ts') FROM jsonb_array_elements(c.transfers) t
        WHERE t ->> 'kind' = 'skill' OR t -> 'from' <> '[]'::jsonb) AS transfers,
       extract(epoch FROM c.end_ts - c.start_ts)::double precision AS time_to_close_s,
       cardinality(s.survey_dialogs) > 0 AS had_survey,
       c.deleted, c.last_position
FROM conversations c
LEFT JOIN LATERAL (
    -- survey dialogs, looked up once per conversation rather than once per message
    SELECT coalesce(array_agg(d.dialog_id), '{}') AS survey_dialogs
    FROM dialogs d
    WHERE d.conversation_id = c.conversation_id AND d.dialog_type = 'POST_SURVEY'
) s ON true
LEFT JOIN LATERAL (
    SELECT min(m.server_ts) FILTER (WHERE m.originator_role = 'CONSUMER'
                                      AND m.dialog_id <> ALL (s.survey_dialogs))
               AS first_consumer_message_at,
           count(*) FILTER (WHERE m.originator_role = 'CONSUMER') AS consumer_messages,
           count(*) FILTER (WHERE m.originator_role IN ('ASSIGNED_AGENT', 'AGENT', 'MANAGER'))
               AS agent_messages,
           count(*) FILTER (WHERE m.originator_role IS NULL
                              OR m.originator_role NOT IN ('CONSUMER', 'ASSIGNED_AGENT', 'AGENT',
                                                           'MANAGER')) AS other_messages
    FROM messages m
    WHERE m.conversation_id = c.conversation_id
      AND m.event_type IN ('ContentEvent', 'RichContentEvent')
) f ON true
LEFT JOIN LATERAL (
    -- the first answer from the brand's side after the consumer first wrote
    SELECT min(m.server_ts) AS first_agent_message_at
    FROM messages m
    WHERE m.conversation_id = c.conversation_id
      AND m.event_type IN ('ContentEvent', 'RichContentEvent')
      AND m.originator_role IN ('ASSIGNED_AGENT', 'AGENT', 'MANAGER')
      AND m.dialog_id <> ALL (s.survey_dialogs)
      AND m.server_ts >= f.first_consumer_message_at
) a ON true
"""

V_DAILY = """
CREATE VIEW v_daily AS
SELECT start_day AS day,
       count(*) AS conversations,
       count(*) FILTER (WHERE state = 'CLOSE') AS closed,
       sum(consumer_messages + agent_messages + other_messages)::bigint AS messages,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY first_response_s) AS median_first_response_s,
       avg(csat_rate)::double precision AS csat_average,
       count(csat_rate) AS csat_responses,
       count(*) FILTER (WHERE csat_rate = 1) AS csat_1,
       count(*) FILTER (WHERE csat_rate = 2) AS csat_2,
       count(*) FILTER (WHERE csat_rate = 3) AS csat_3,
       count(*) FILTER (WHERE csat_rate = 4) AS csat_4,
       count(*) FILTER (WHERE csat_rate = 5) AS csat_5
FROM v_conversation_facts
GROUP BY start_day
"""


#: The facts read a conversation's messages by conversation_id for these columns only: with
#: them in the index the scans are index-only (no heap page per message; bench/analytics.py).
MESSAGES_INCLUDE = ["event_type", "originator_role", "server_ts"]


def upgrade() -> None:
    op.drop_index("messages_conversation_dialog_sequence_idx", "messages")
    op.create_index("messages_conversation_dialog_sequence_idx", "messages",
                    ["conversation_id", "dialog_id", "sequence"],
                    postgresql_include=MESSAGES_INCLUDE)
    op.create_index("conversations_start_ts_idx", "conversations", ["start_ts"])
    op.execute("CREATE INDEX conversations_start_day_idx ON conversations "
               "(((timezone('UTC', start_ts))::date))")
    op.execute(V_MESSAGES)
    op.execute(V_CONVERSATION_FACTS)
    op.execute(V_DAILY)


def downgrade() -> None:
    op.drop_index("messages_conversation_dialog_sequence_idx", "messages")
    op.create_index("messages_conversation_dialog_sequence_idx", "messages",
                    ["conversation_id", "dialog_id", "sequence"])
    op.execute("DROP VIEW v_daily")
    op.execute("DROP VIEW v_conversation_facts")
    op.execute("DROP VIEW v_messages")
    op.drop_index("conversations_start_day_idx", "conversations")
    op.drop_index("conversations_start_ts_idx", "conversations")
