"""SQL of the projection (recorder.projection: fold, projector, rebuild).

Table names are unqualified on purpose: `recorder rebuild` runs the same statements with
`search_path = recorder_rebuild, <live schema>`, so they land in fresh tables while `events`
and `log_head` still resolve to the live log.

Batches travel as parallel arrays through unnest(): one round trip per table per batch.
Epoch milliseconds become timestamptz in SQL, which is cheaper than building datetimes in
Python.
"""

from __future__ import annotations

from recorder.eventlog.sql import HEAD


def ms_to_timestamp(ms: str) -> str:
    """The one conversion of epoch ms to timestamptz, so live and rebuild agree to the µs."""
    return f"to_timestamp({ms} / 1000.0)"


_ts = ms_to_timestamp


# -- the log -------------------------------------------------------------------------------------


# Only what the fold reads. `other` events and typing indicators project to nothing, so they
# are not even shipped; the caller advances to `$2` when fewer than `$3` rows come back.
_READ_RANGE = """
SELECT position, kind, account_id, consumer_id, conversation_id, dialog_id,
       payload::text AS payload{extra}
FROM events
WHERE position > $1 AND position <= $2
  AND kind <> 'other' AND change_type IS DISTINCT FROM 'ChatStateEvent'
ORDER BY position
LIMIT $3
"""
READ_RANGE = _READ_RANGE.format(extra="")
# The projector's variant also returns recorded_at, last, for its lag measure.
READ_RANGE_TIMED = _READ_RANGE.format(
    extra=", extract(epoch FROM recorded_at)::double precision AS recorded_at")

# -- positions -----------------------------------------------------------------------------------

ENSURE_POSITION = """
INSERT INTO projection_positions (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING
"""

LOAD_POSITION = "SELECT position FROM projection_positions WHERE name = $1"

LOCK_POSITION = "SELECT position FROM projection_positions WHERE name = $1 FOR UPDATE"

# The compare-and-set that makes a second projector fail instead of applying events twice.
# It runs first in the batch's transaction, so a concurrent projector waits on the row lock
# and then finds the position moved.
ADVANCE_POSITION = """
UPDATE projection_positions SET position = $3, updated_at = now()
WHERE name = $1 AND position = $2
"""
#: ADVANCE_POSITION's command tag when the compare-and-set matched
POSITION_ADVANCED = "UPDATE 1"

SET_POSITION = """
INSERT INTO projection_positions (name, position) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()
"""

# -- conversations -------------------------------------------------------------------------------

READ_CONVERSATION_STATE = """
SELECT conversation_id, meta_data_last_update_ts, state_position, deleted, deleted_ts,
       assignments::text AS assignments
FROM conversations
WHERE conversation_id = ANY($1::text[])
"""

STATE_COLUMNS = (
    "brand_id", "skill_id", "state", "stage", "close_reason", "start_ts", "end_ts",
    "meta_data_last_update_ts", "state_position", "csat_rate", "csat_resolution_confirmation",
    "csat_status", "ttr_type", "ttr_value", "effective_ttr", "details",
)
CHANGE_COLUMNS = ("deleted", "deleted_ts", "assignments", "transfers")


def _keep_unless(marker: str, columns: tuple[str, ...]) -> str:
    return ",\n    ".join(
        f"{c} = CASE WHEN EXCLUDED.{marker} IS NULL THEN c.{c} ELSE EXCLUDED.{c} END"
        for c in columns
    )


# One row per conversation touched by the batch, already merged with the stored row in
# Python. A NULL state_position means "no new winning UPSERT: keep the stored state"; a NULL
# assignments means "no conversation change in this batch: keep deleted/transfers". Identity
# and first/last positions are order-independent: min/max, identity from the earliest event.
UPSERT_CONVERSATIONS = f"""
INSERT INTO conversations AS c (
    conversation_id, account_id, consumer_id, first_position, last_position,
    {", ".join(STATE_COLUMNS)}, {", ".join(CHANGE_COLUMNS)}, updated_at
)
SELECT u.conversation_id, u.account_id, u.consumer_id, u.first_position, u.last_position,
       u.brand_id, u.skill_id, u.state, u.stage, u.close_reason,
       {_ts("u.start_ms")}, {_ts("u.end_ms")}, u.version, u.state_position,
       u.csat_rate, u.csat_resolution_confirmation, u.csat_status, u.ttr_type, u.ttr_value,
       {_ts("u.effective_ttr_ms")}, u.details::jsonb,
       u.deleted, u.deleted_ts, u.assignments::jsonb, u.transfers::jsonb, now()
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
    $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::bigint[],
    $13::bigint[], $14::bigint[], $15::integer[], $16::boolean[], $17::text[], $18::text[],
    $19::bigint[], $20::bigint[], $21::text[], $22::boolean[], $23::bigint[], $24::text[],
    $25::text[]
) AS u(
    conversation_id, account_id, consumer_id, first_position, last_position,
    brand_id, skill_id, state, stage, close_reason, start_ms, end_ms,
    version, state_position, csat_rate, csat_resolution_confirmation, csat_status, ttr_type,
    ttr_value, effective_ttr_ms, details, deleted, deleted_ts, assignments,
    transfers
)
ON CONFLICT (conversation_id) DO UPDATE SET
    account_id = CASE WHEN EXCLUDED.first_position < c.first_position
                      THEN EXCLUDED.account_id ELSE c.account_id END,
    consumer_id = CASE WHEN EXCLUDED.first_position < c.first_position
                       THEN EXCLUDED.consumer_id ELSE c.consumer_id END,
    first_position = LEAST(c.first_position, EXCLUDED.first_position),
    last_position = GREATEST(c.last_position, EXCLUDED.last_position),
    {_keep_unless("state_position", STATE_COLUMNS)},
    {_keep_unless("assignments", CHANGE_COLUMNS)},
    updated_at = now()
"""

# Participants and dialogs are replaced as a whole for conversations with a new winner.
DELETE_PARTICIPANTS = "DELETE FROM participants WHERE conversation_id = ANY($1::text[])"

INSERT_PARTICIPANTS = """
INSERT INTO participants (conversation_id, participant_id, role, state)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
"""

DELETE_DIALOGS = "DELETE FROM dialogs WHERE conversation_id = ANY($1::text[])"

# A dialog id claimed by two conversations (never seen, but not impossible in bad data)
# belongs to the last winner applied.
UPSERT_DIALOGS = f"""
INSERT INTO dialogs (
    dialog_id, conversation_id, dialog_type, channel_type, state, creation_ts, end_ts,
    closed_by, closed_cause, meta_data_last_update_ts, participants
)
SELECT u.dialog_id, u.conversation_id, u.dialog_type, u.channel_type, u.state,
       {_ts("u.creation_ms")}, {_ts("u.end_ms")}, u.closed_by, u.closed_cause, u.version,
       u.participants::jsonb
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
    $8::text[], $9::text[], $10::bigint[], $11::text[]
) AS u(dialog_id, conversation_id, dialog_type, channel_type, state, creation_ms, end_ms,
       closed_by, closed_cause, version, participants)
ON CONFLICT (dialog_id) DO UPDATE SET
    conversation_id = EXCLUDED.conversation_id, dialog_type = EXCLUDED.dialog_type,
    channel_type = EXCLUDED.channel_type, state = EXCLUDED.state,
    creation_ts = EXCLUDED.creation_ts, end_ts = EXCLUDED.end_ts,
    closed_by = EXCLUDED.closed_by, closed_cause = EXCLUDED.closed_cause,
    meta_data_last_update_ts = EXCLUDED.meta_data_last_update_ts,
    participants = EXCLUDED.participants
"""

# -- messages and receipts -----------------------------------------------------------------------

# Column order of the rows recorder.projection_rows builds (server_ts as epoch ms there).
MESSAGE_COLUMNS = (
    "dialog_id", "sequence", "conversation_id", "originator_id", "originator_role", "event_type",
    "content_type", "text", "rich_content", "file", "metadata", "audience", "event", "server_ts",
    "position",
)

# Insert if absent. Should a key ever come twice (the log is deduplicated, so only a replay
# of the same event does), the earliest position wins: the result does not depend on order.
UPSERT_MESSAGES = f"""
INSERT INTO messages AS m ({", ".join(MESSAGE_COLUMNS)})
SELECT u.dialog_id, u.sequence, u.conversation_id, u.originator_id, u.originator_role,
       u.event_type, u.content_type, u.text, u.rich_content::jsonb, u.file::jsonb,
       u.metadata::jsonb, u.audience, u.event::jsonb, {_ts("u.server_ms")}, u.position
FROM unnest(
    $1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::bigint[],
    $15::bigint[]
) AS u(dialog_id, sequence, conversation_id, originator_id, originator_role, event_type,
       content_type, text, rich_content, file, metadata, audience, event, server_ms, position)
ON CONFLICT (dialog_id, sequence) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in MESSAGE_COLUMNS[2:])}
WHERE EXCLUDED.position < m.position
"""

RECEIPT_COLUMNS = ("dialog_id", "sequence", "participant_id", "status", "server_ts", "position")

UPSERT_RECEIPTS = f"""
INSERT INTO receipts AS r (dialog_id, sequence, participant_id, status, server_ts, position)
SELECT u.dialog_id, u.sequence, u.participant_id, u.status, {_ts("u.server_ms")}, u.position
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[])
    AS u(dialog_id, sequence, participant_id, status, server_ms, position)
ON CONFLICT (dialog_id, sequence, participant_id, status) DO UPDATE SET
    server_ts = EXCLUDED.server_ts, position = EXCLUDED.position
WHERE EXCLUDED.position < r.position
"""

# -- statistics ----------------------------------------------------------------------------------

# Projection tables whose rows changed since their statistics were taken by more than they
# held then (at least $2 rows): a table that grew from nothing before autovacuum's first
# ANALYZE plans `conversation_id = ANY(…)` on participants and dialogs as a full scan.
STALE_STATISTICS = """
SELECT s.relname
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = current_schema() AND s.relname = ANY($1::text[])
  AND s.n_mod_since_analyze > greatest($2, c.reltuples)
ORDER BY s.relname
"""


def analyze(table: str) -> str:
    return f"ANALYZE {ident(table)}"


# -- locks ---------------------------------------------------------------------------------------

TRY_XACT_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
UNLOCK = "SELECT pg_advisory_unlock($1)"
CURRENT_SCHEMA = "SELECT current_schema()"


# -- rebuild: scratch tables beside the live ones (names from recorder.db.schema) ---------------

REBUILD_SCHEMA = "recorder_rebuild"
DROP_SCRATCH = f"DROP SCHEMA IF EXISTS {REBUILD_SCHEMA} CASCADE"
CREATE_SCRATCH = f"CREATE SCHEMA {REBUILD_SCHEMA}"


# Which of these conversations the scratch tables hold already (a bulk load past its memory cap).
STORED_CONVERSATIONS = """
SELECT conversation_id FROM conversations WHERE conversation_id = ANY($1::text[])
"""


def ident(name: str) -> str:
    """A quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def unlogged(create_table: str) -> str:
    """A CREATE TABLE statement for an unlogged table: scratch space, copied into the logged
    live tables by --swap anyway."""
    return create_table.replace("CREATE TABLE", "CREATE UNLOGGED TABLE", 1)


def unkey_for_bulk_load(table: str) -> str:
    """Keyed after the bulk load: one sort beats a million index inserts."""
    return f"ALTER TABLE {REBUILD_SCHEMA}.{table} DROP CONSTRAINT {table}_pkey"


def drop_repeated_keys(table: str, key: list[str]) -> str:
    """Repeated message or receipt keys of the bulk load: the earliest position stays."""
    name = f"{REBUILD_SCHEMA}.{table}"
    return f"""
        DELETE FROM {name} t
        USING (SELECT {", ".join(key)}, min(position) AS keep FROM {name}
               GROUP BY {", ".join(key)} HAVING count(*) > 1) d
        WHERE {" AND ".join(f"t.{c} = d.{c}" for c in key)} AND t.position <> d.keep
    """


def key_after_bulk_load(table: str, key: list[str]) -> str:
    return f"ALTER TABLE {REBUILD_SCHEMA}.{table} ADD PRIMARY KEY ({', '.join(key)})"


def compare_table(live_schema: str, table: str, columns: list[str], key: list[str],
                  examples: int) -> str:
    """Row counts, rows only on either side (EXCEPT ALL), and a few of their keys."""
    cols, keys = ", ".join(columns), ", ".join(key)
    return f"""
        WITH l AS (SELECT {cols} FROM {ident(live_schema)}.{table}),
             r AS (SELECT {cols} FROM {REBUILD_SCHEMA}.{table}),
             only_l AS (SELECT * FROM l EXCEPT ALL SELECT * FROM r),
             only_r AS (SELECT * FROM r EXCEPT ALL SELECT * FROM l)
        SELECT (SELECT count(*) FROM l) AS live_rows, (SELECT count(*) FROM r) AS rebuilt_rows,
               (SELECT count(*) FROM only_l) AS only_live,
               (SELECT count(*) FROM only_r) AS only_rebuilt,
               ARRAY(SELECT DISTINCT concat_ws('/', {keys}) AS k
                     FROM (SELECT {keys} FROM only_l UNION ALL SELECT {keys} FROM only_r) d
                     ORDER BY k LIMIT {examples}) AS examples
    """


def truncate(live_schema: str, tables: list[str]) -> str:
    return "TRUNCATE " + ", ".join(f"{ident(live_schema)}.{t}" for t in tables)


def copy_from_scratch(live_schema: str, table: str, columns: list[str]) -> str:
    cols = ", ".join(columns)
    return (f"INSERT INTO {ident(live_schema)}.{table} ({cols}) "
            f"SELECT {cols} FROM {REBUILD_SCHEMA}.{table}")


# -- status and the demo's progress line ---------------------------------------------------------

PROJECTION_POSITIONS = "SELECT name, position FROM projection_positions ORDER BY name"

DEMO_PROGRESS = f"""
SELECT ({HEAD}) AS events,
       (SELECT count(*) FROM conversations) AS conversations,
       (SELECT count(*) FROM conversations WHERE state = 'OPEN') AS open,
       (SELECT count(*) FROM messages) AS messages,
       (SELECT count(*) FROM receipts) AS receipts,
       (SELECT count(*) FROM quarantine) AS quarantined
"""

# -- agents and reconciliations (issue 16): the newest event per key wins -------------------------

UPSERT_AGENTS = f"""
INSERT INTO agents AS a (agent_id, known, nickname, full_name, picture_url, employee_id, profile,
                         fetched_at, position)
SELECT u.agent_id, u.known, u.nickname, u.full_name, u.picture_url, u.employee_id,
       u.profile::jsonb, {_ts("u.fetched_ms")}, u.position
FROM unnest($1::text[], $2::boolean[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::bigint[], $9::bigint[])
    AS u(agent_id, known, nickname, full_name, picture_url, employee_id, profile, fetched_ms,
         position)
ON CONFLICT (agent_id) DO UPDATE SET
    known = EXCLUDED.known, nickname = EXCLUDED.nickname, full_name = EXCLUDED.full_name,
    picture_url = EXCLUDED.picture_url, employee_id = EXCLUDED.employee_id,
    profile = EXCLUDED.profile, fetched_at = EXCLUDED.fetched_at, position = EXCLUDED.position
WHERE a.position < EXCLUDED.position
"""

UPSERT_RECONCILIATIONS = f"""
INSERT INTO reconciliations AS r (conversation_id, consumer_id, checked_at, conversation_state,
    history_records, matched, backfilled, only_in_log, content_differs, history_partial,
    requests, unreported, details, position)
SELECT u.conversation_id, u.consumer_id, {_ts("u.checked_ms")}, u.state, u.history_records,
       u.matched, u.backfilled, u.only_in_log, u.content_differs, u.history_partial,
       u.requests, u.unreported, u.details::jsonb, u.position
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::int[], $6::int[], $7::int[],
            $8::int[], $9::int[], $10::boolean[], $11::int[], $12::boolean[], $13::text[],
            $14::bigint[])
    AS u(conversation_id, consumer_id, checked_ms, state, history_records, matched, backfilled,
         only_in_log, content_differs, history_partial, requests, unreported, details,
         position)
ON CONFLICT (conversation_id) DO UPDATE SET
    consumer_id = EXCLUDED.consumer_id, checked_at = EXCLUDED.checked_at,
    conversation_state = EXCLUDED.conversation_state,
    history_records = EXCLUDED.history_records, matched = EXCLUDED.matched,
    backfilled = EXCLUDED.backfilled, only_in_log = EXCLUDED.only_in_log,
    content_differs = EXCLUDED.content_differs, history_partial = EXCLUDED.history_partial,
    requests = EXCLUDED.requests, unreported = EXCLUDED.unreported,
    details = EXCLUDED.details, position = EXCLUDED.position
WHERE r.position < EXCLUDED.position
"""
