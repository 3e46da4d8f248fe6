"""A conversation's log against LivePerson's history of it: pure Python, no I/O.

Records are matched per dialog and sequence. The reference leaves fields open (protocol.md
12a, UNCONFIRMED): a record without `dialogId` is matched by its sequence in the dialog open
at its time (or in the one dialog holding that sequence), and backfilled there; a record
without `sequence` (LivePerson documents receipts so) is matched by its content: originator,
type and, for receipts, status and the sequences acknowledged, else its time.

What the history has and the log lacks is to be backfilled under the live dedupe key
(`(dialog, sequence)`), so a live copy arriving later is a duplicate; a record without a
sequence can only be keyed by its content, and a live copy of it would be a second row (its
receipts project the same either way). What the log has and the history lacks is reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

#: The event types LivePerson's history holds; nothing else is expected there.
HISTORY_TYPES = frozenset({"ContentEvent", "RichContentEvent", "AcceptStatusEvent"})
ACCEPT_STATUS = "AcceptStatusEvent"
#: Most keys a reconciliation event lists per kind of finding (the counts are exact).
KEYS_LISTED = 100


class LogMessage(NamedTuple):
    """A sequenced messaging event of the conversation, as stored in the log."""

    dialog_id: str
    sequence: int
    event_type: str | None
    originator_id: str | None
    server_ms: int | None
    event: Any  # the payload's `event` object


class DialogSpan(NamedTuple):
    dialog_id: str
    dialog_type: str | None
    creation_ms: int | None
    end_ms: int | None


class Backfill(NamedTuple):
    dialog_id: str
    sequence: int | None
    record: dict[str, Any]


@dataclasses.dataclass
class Comparison:
    history_records: int = 0
    matched: int = 0
    backfill: list[Backfill] = dataclasses.field(default_factory=list)
    only_in_log: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    content_differs: list[tuple[str, int]] = dataclasses.field(default_factory=list)


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def record_originator(record: dict[str, Any]) -> str | None:
    found = _text(record.get("originatorId"))
    if found is None:
        metadata = record.get("originatorMetadata")
        if isinstance(metadata, dict):
            found = _text(metadata.get("id"))
    return found or _text(record.get("originatorPId"))


def _event(record: dict[str, Any]) -> dict[str, Any]:
    body = record.get("event")
    return body if isinstance(body, dict) else {}


def content_key(event_type: str | None, originator: str | None, body: dict[str, Any],
                server_ms: int | None) -> tuple[Any, ...]:
    """How a record without a sequence is recognised in the log."""
    if event_type == ACCEPT_STATUS:
        listed = body.get("sequenceList")
        sequences = tuple(sorted(s for s in listed if type(s) is int)) if isinstance(
            listed, list) else ()
        return (ACCEPT_STATUS, originator, body.get("status"), sequences)
    return (event_type, originator, server_ms)


def dialog_at(dialogs: Sequence[DialogSpan], server_ms: int | None,
              conversation_id: str) -> str:
    """The dialog open at `server_ms`: the latest created before it; else MAIN."""
    ordered = sorted(dialogs, key=lambda d: (d.creation_ms is None, d.creation_ms or 0))
    if server_ms is not None:
        for span in reversed(ordered):
            if span.creation_ms is not None and span.creation_ms <= server_ms and (
                    span.end_ms is None or server_ms <= span.end_ms):
                return span.dialog_id
    for span in ordered:
        if span.dialog_type == "MAIN":
            return span.dialog_id
    return ordered[0].dialog_id if ordered else conversation_id


def compare(conversation_id: str, log: Iterable[LogMessage], dialogs: Sequence[DialogSpan],
            history: Iterable[dict[str, Any]]) -> Comparison:
    by_key: dict[tuple[str, int], LogMessage] = {}
    by_sequence: dict[int, list[LogMessage]] = {}
    by_content: dict[tuple[Any, ...], list[LogMessage]] = {}
    for message in log:
        by_key[(message.dialog_id, message.sequence)] = message
        by_sequence.setdefault(message.sequence, []).append(message)
        body = message.event if isinstance(message.event, dict) else {}
        by_content.setdefault(content_key(message.event_type, message.originator_id, body,
                                          message.server_ms), []).append(message)
    witnessed: set[tuple[str, int]] = set()
    backfilling: set[tuple[Any, ...]] = set()
    result = Comparison()
    for record in history:
        result.history_records += 1
        body = _event(record)
        event_type = _text(body.get("type"))
        sequence = _int(record.get("sequence"))
        dialog_id = _text(record.get("dialogId"))
        server_ms = _int(record.get("serverTimestamp"))
        found: LogMessage | None = None
        if sequence is not None:
            if dialog_id is None:
                # The dialog open at its time first; another dialog only where that one holds
                # the sequence alone (sequences may be per dialog: then it is ambiguous).
                dialog_id = dialog_at(dialogs, server_ms, conversation_id)
                found = by_key.get((dialog_id, sequence))
                if found is None or found.event_type != event_type:
                    same = [m for m in by_sequence.get(sequence, [])
                            if m.event_type == event_type]
                    found = same[0] if len(same) == 1 else found
            else:
                found = by_key.get((dialog_id, sequence))
        else:
            known = by_content.get(content_key(event_type, record_originator(record), body,
                                               server_ms))
            if known:
                result.matched += 1
                witnessed.update((m.dialog_id, m.sequence) for m in known)
                continue
        if found is not None:
            result.matched += 1
            witnessed.add((found.dialog_id, found.sequence))
            logged = found.event if isinstance(found.event, dict) else {}
            if isinstance(body.get("message"), str) and isinstance(logged.get("message"), str) \
                    and body["message"] != logged["message"]:
                result.content_differs.append((found.dialog_id, found.sequence))
            continue
        target = dialog_id or dialog_at(dialogs, server_ms, conversation_id)
        key = (target, sequence) if sequence is not None else (
            "content", content_key(event_type, record_originator(record), body, server_ms))
        if key in backfilling:
            continue  # the history listed it twice: one event, backfilled once
        backfilling.add(key)
        result.backfill.append(Backfill(target, sequence, record))
    for key, message in by_key.items():
        if key not in witnessed and message.event_type in HISTORY_TYPES:
            result.only_in_log.append(key)
    result.only_in_log.sort()
    return result


def listed(keys: Sequence[tuple[str, int | None]]) -> list[list[Any]]:
    return [[dialog, sequence] for dialog, sequence in keys[:KEYS_LISTED]]
