"""Rows of `agents` and `reconciliations`, from `agent` and `reconciliation` events (issue 16).

Both tables show the newest event per key: a later position replaces an earlier one, in a
batch (here) and across batches (the upserts' `WHERE position <` in recorder.projection.sql).
The payloads are the recorder's own (recorder.history), read defensively all the same: an event
that does not have the shape projects to nothing and stays in the log.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_MS = 253_402_300_799_999
INT32 = 2**31 - 1
#: Most keys kept in a reconciliation's `details` lists.
DETAIL_KEYS = 100


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _count(value: Any) -> int:
    return value if type(value) is int and 0 <= value <= INT32 else 0


def _ms(value: Any) -> int | None:
    return value if type(value) is int and 0 < value <= MAX_MS else None


def agent_row(change: dict[str, Any], position: int) -> tuple[Any, ...] | None:
    """(agent_id, known, nickname, full_name, picture_url, employee_id, profile, fetched_ms,
    position), or None when the event names no agent or no time."""
    agent_id, fetched = _text(change.get("agentId")), _ms(change.get("fetchedAt"))
    if not agent_id or fetched is None:
        return None
    profile = change.get("profile")
    if change.get("found") is not True or not isinstance(profile, dict):
        return (agent_id, False, None, None, None, None, None, fetched, position)
    return (
        agent_id, True, _text(profile.get("nickname")), _text(profile.get("fullName")),
        _text(profile.get("pictureUrl")), _text(profile.get("employeeId")),
        orjson.dumps(profile).decode(), fetched, position,
    )


def reconciliation_row(change: dict[str, Any], conversation_id: str | None,
                       position: int) -> tuple[Any, ...] | None:
    """(conversation_id, consumer_id, checked_ms, state, history_records, matched, backfilled,
    only_in_log, content_differs, history_partial, requests, unreported, details, position)."""
    conversation_id = conversation_id or _text(change.get("conversationId"))
    checked = _ms(change.get("checkedAt"))
    if not conversation_id or checked is None:
        return None
    details = {key: change[key][:DETAIL_KEYS] for key in
               ("onlyInLogKeys", "contentDiffersKeys", "backfilledKeys")
               if isinstance(change.get(key), list)}
    return (
        conversation_id, _text(change.get("consumerId")), checked,
        _text(change.get("conversationState")), _count(change.get("historyRecords")),
        _count(change.get("matched")), _count(change.get("backfilled")),
        _count(change.get("onlyInLog")), _count(change.get("contentDiffers")),
        change.get("historyPartial") is True, _count(change.get("requests")),
        change.get("unreported") is True, orjson.dumps(details).decode(), position,
    )
