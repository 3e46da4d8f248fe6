"""The unit the writer appends: one change from one notification, with its derived keys."""

from __future__ import annotations

import dataclasses
import hashlib

import orjson

KINDS = ("conversation", "messaging", "agent", "reconciliation", "other")

#: `type` of a messaging event backfilled from LivePerson's Messaging History (not the socket):
#: the same dedupe key as its live copy, so whichever comes second is a duplicate.
HISTORY_EVENT_TYPE = "msgHist.MessageEventRecord"
#: `type` of an agent's public profile (kind `agent`), fetched from the acCdnDomain service.
AGENT_PROFILE_TYPE = "acCdnDomain.AgentProfile"
#: `type` of a conversation's check against the history (kind `reconciliation`).
RECONCILIATION_TYPE = "recorder.Reconciliation"


def dedupe_digest(*parts: object) -> bytes:
    """A narrow (16-byte) key for the unique index, from the source-derived key parts."""
    material = orjson.dumps([None if p is None else str(p) for p in parts])
    return hashlib.blake2b(material, digest_size=16).digest()


def canonical_json(value: object) -> bytes:
    """Key-sorted JSON, so two deliveries of the same object hash alike."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclasses.dataclass(slots=True)
class EventRecord:
    """One row of `events`: built from a notification without a position, and read back
    from the log with one (and the time it was recorded).

    `payload` is the change object's JSON text; the times are Unix seconds. The fields are the
    table's columns (recorder.db.schema.EVENT_COLUMNS; tests/eventlog/test_columns.py).
    """

    received_at: float
    account_id: str
    consumer_id: str
    session_id: str
    kind: str
    type: str
    change_type: str | None
    conversation_id: str | None
    dialog_id: str | None
    sequence: int | None
    originator_id: str | None
    server_ts: float | None
    dedupe_key: bytes
    payload: str
    #: given by the writer when the row is committed; None before
    position: int | None = None
    recorded_at: float | None = None


@dataclasses.dataclass(slots=True)
class QuarantinedFrame:
    """Input that could not be stored as an event, kept whole with the reason."""

    received_at: float
    raw: bytes
    error: str
    session_id: str | None = None
    account_id: str | None = None
    consumer_id: str | None = None
