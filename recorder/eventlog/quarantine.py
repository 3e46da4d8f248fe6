"""Quarantine rows: input that could not be stored as an event, kept whole with the reason.

A quarantine insert must not fail in turn, or the writer would stop on the very row it is
trying to set aside. So every field is made storable here: text without NUL characters or
lone surrogates (both become visible escapes), a session id only when it is a UUID. Each row
has a key, so retrying after a lost commit acknowledgement does not store it twice.
"""

from __future__ import annotations

import hashlib
import uuid

from recorder.eventlog.records import EventRecord, QuarantinedFrame


def quarantine_event(event: EventRecord, error: str) -> QuarantinedFrame:
    return QuarantinedFrame(
        received_at=event.received_at,
        raw=event.payload.encode("utf-8", "surrogatepass"),
        error=error,
        session_id=event.session_id,
        account_id=event.account_id,
        consumer_id=event.consumer_id,
    )


def _text(value: str | None) -> str | None:
    """Text PostgreSQL stores: NUL and lone surrogates (not UTF-8) become visible escapes."""
    if value is None:
        return None
    if not value.isascii():
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value.replace("\x00", "\\u0000")


def _uuid(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def frame_key(frame: QuarantinedFrame) -> bytes:
    material = b"\x1f".join(
        [frame.raw, str(frame.session_id).encode(), repr(frame.received_at).encode()]
    )
    return hashlib.blake2b(material, digest_size=16).digest()


def quarantine_row(frame: QuarantinedFrame) -> tuple[object, ...]:
    """Arguments for sql.INSERT_QUARANTINE, every one storable."""
    return (
        frame.received_at,
        _uuid(frame.session_id),
        _text(frame.account_id),
        _text(frame.consumer_id),
        frame.raw,
        _text(frame.error) or "",
        frame_key(frame),
    )


def minimal_quarantine_row(frame: QuarantinedFrame) -> tuple[object, ...]:
    """The last resort: only the raw bytes, the reason and the key."""
    return (frame.received_at, None, None, None, frame.raw, "unstorable frame", frame_key(frame))
