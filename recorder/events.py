"""The unit the writer appends: one change from one notification, with its derived keys."""

from __future__ import annotations

import dataclasses
import hashlib

import orjson

KINDS = ("conversation", "messaging", "other")


def dedupe_digest(*parts: object) -> bytes:
    """A narrow (16-byte) key for the unique index, from the source-derived key parts."""
    material = orjson.dumps([None if p is None else str(p) for p in parts])
    return hashlib.blake2b(material, digest_size=16).digest()


def canonical_json(value: object) -> bytes:
    """Key-sorted JSON, so two deliveries of the same object hash alike."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclasses.dataclass(slots=True)
class EventRecord:
    """One row for `events`, before a position is given out.

    `payload` is the change object's JSON text; `received_at` and `server_ts` are Unix seconds.
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


@dataclasses.dataclass(slots=True)
class QuarantinedFrame:
    """Input that could not be stored as an event, kept whole with the reason."""

    received_at: float
    raw: bytes
    error: str
    session_id: str | None = None
    account_id: str | None = None
    consumer_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class StoredEvent:
    """A row read back from the log."""

    position: int
    received_at: float
    recorded_at: float
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
