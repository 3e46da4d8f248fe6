"""What each kind of export holds: typed columns (Arrow), shared by the three formats.

Timestamps are UTC microseconds; JSON columns hold JSON text (in jsonl they are embedded as
JSON values). Bump SCHEMA_VERSION whenever a column is added, removed or retyped: manifests
carry it so loaders can tell.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa

SCHEMA_VERSION = 1
TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclasses.dataclass(frozen=True)
class Columns:
    schema: pa.Schema
    #: columns whose text is JSON (embedded as values in jsonl)
    json: frozenset[str]

    @property
    def names(self) -> list[str]:
        return list(self.schema.names)

    def describe(self) -> list[dict[str, str]]:
        return [
            {"name": f.name, "type": "json" if f.name in self.json else str(f.type)}
            for f in self.schema
        ]


def _columns(*fields: tuple[str, pa.DataType | str]) -> Columns:
    json = frozenset(name for name, kind in fields if kind == "json")
    schema = pa.schema(
        [(name, pa.string() if kind == "json" else kind) for name, kind in fields]
    )
    return Columns(schema, json)


EVENTS = _columns(
    ("position", pa.int64()),
    ("received_at", TIMESTAMP),
    ("recorded_at", TIMESTAMP),
    ("account_id", pa.string()),
    ("consumer_id", pa.string()),
    ("session_id", pa.string()),
    ("kind", pa.string()),
    ("type", pa.string()),
    ("change_type", pa.string()),
    ("conversation_id", pa.string()),
    ("dialog_id", pa.string()),
    ("sequence", pa.int64()),
    ("originator_id", pa.string()),
    ("server_ts", TIMESTAMP),
    ("payload", "json"),
)

CONVERSATIONS = _columns(
    ("conversation_id", pa.string()),
    ("account_id", pa.string()),
    ("consumer_id", pa.string()),
    ("brand_id", pa.string()),
    ("skill_id", pa.string()),
    ("state", pa.string()),
    ("stage", pa.string()),
    ("close_reason", pa.string()),
    ("start_ts", TIMESTAMP),
    ("end_ts", TIMESTAMP),
    ("csat_rate", pa.int32()),
    ("csat_resolution_confirmation", pa.bool_()),
    ("csat_status", pa.string()),
    ("ttr_type", pa.string()),
    ("ttr_value", pa.int64()),
    ("effective_ttr", TIMESTAMP),
    ("deleted", pa.bool_()),
    ("participants", "json"),
    ("dialogs", "json"),
    ("transfers", "json"),
    ("first_position", pa.int64()),
    ("last_position", pa.int64()),
    ("updated_at", TIMESTAMP),
)

MESSAGES = _columns(
    ("conversation_id", pa.string()),
    ("dialog_id", pa.string()),
    ("dialog_type", pa.string()),
    ("sequence", pa.int64()),
    ("server_ts", TIMESTAMP),
    ("originator_id", pa.string()),
    ("originator_role", pa.string()),
    ("event_type", pa.string()),
    ("content_type", pa.string()),
    ("text", pa.string()),
    ("rich_content", "json"),
    ("file", "json"),
    ("metadata", "json"),
    ("audience", pa.string()),
    ("event", "json"),
    ("receipts", "json"),
    ("position", pa.int64()),
)

BY_KIND = {"events": EVENTS, "conversations": CONVERSATIONS, "transcripts": MESSAGES}
