"""The projection: current conversation state folded from the event log (design.md section 3).

`apply_events` folds a batch into the tables; `apply_and_advance` does it in one transaction
with the compare-and-set of the saved position, which is what the projector and rebuild use.

Rules (the property test in tests/projection/test_properties.py holds them to account):

* Conversation state is last-writer-wins on `metaDataLastUpdateTs` (or the older
  `lastUpdateTime`). A winning UPSERT replaces the state and the participants and dialogs as a
  whole; an older one is ignored, except that it still counts for `transfers`. On equal
  timestamps the earlier log position wins, which in log order means "keep the stored one".
  Equal timestamps only reach the fold from payloads without one: the log's dedupe key
  includes the timestamp.
* DELETE marks the conversation `deleted` and keeps its state: the conversation left the
  subscription's scope, its history did not vanish. A DELETE applies when its timestamp is
  ≥ the stored state's, so a later UPSERT (a newer state) clears the mark again. A DELETE
  without a timestamp is final.
* `transfers`: skill and agent changes between consecutive UPSERTs in timestamp order,
  derived from `assignments` (every UPSERT seen, as [ts, position, skill, agents]), so late
  and out-of-order UPSERTs land in their place:
  `{"ts": ms, "kind": "skill", "from": "…", "to": "…"}` and
  `{"ts": ms, "kind": "agent", "from": [ids], "to": [ids]}` (assigned agents).
* Messages are keyed by (dialog_id, sequence) and receipts by (dialog_id, sequence,
  participant_id, status), inserted if absent; on a repeat the earliest position wins.
  AcceptStatusEvents become receipts (one per acknowledged sequence), not messages.
  Typing indicators (no sequence) project to nothing. Sequenced events of types the
  projection does not know become messages with content_type NULL and the raw `event` kept
  (`event` also keeps quick replies and message shapes no column holds; else it is NULL).
  Structured content has content_type `rich-content`, as in LivePerson's history API.
* A conversation row exists once any change of it projected (a message may come before its
  first UPSERT); `first_position`/`last_position` are the least and greatest such positions,
  and account_id/consumer_id come from the earliest.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg
import orjson

from recorder.errors import ProjectionConflictError
from recorder.logs import event as log_event
from recorder.projection import PROJECTION_NAME
from recorder.projection import sql as q
from recorder.projection.rows import (
    Batch,
    ConversationFacts,
    LogEvent,
    derive_transfers,
    membership_rows,
    state_columns,
)

log = logging.getLogger(__name__)

_NO_STATE = (None,) * len(q.STATE_COLUMNS)


@dataclasses.dataclass(frozen=True, slots=True)
class _Stored:
    version: int | None
    state_position: int | None
    deleted: bool
    deleted_ts: int | None
    assignments: list[list[Any]]


@dataclasses.dataclass
class FoldStats:
    events: int = 0
    conversations: int = 0
    messages: int = 0
    receipts: int = 0


async def load_position(connection: asyncpg.Connection, name: str = PROJECTION_NAME) -> int:
    """The saved position, creating the row at 0 the first time."""
    await connection.execute(q.ENSURE_POSITION, name)
    return int(await connection.fetchval(q.LOAD_POSITION, name))


async def advance_position(
    connection: asyncpg.Connection, old: int, new: int, name: str = PROJECTION_NAME
) -> None:
    """Compare-and-set old → new; ProjectionConflictError if someone else moved it."""
    status = await connection.execute(q.ADVANCE_POSITION, name, old, new)
    if status != q.POSITION_ADVANCED:
        found = await connection.fetchval(q.LOAD_POSITION, name)
        raise ProjectionConflictError(name, old, None if found is None else int(found))


def fold(events: Iterable[LogEvent]) -> Batch:
    """The rows a run of events projects to (pure Python; see recorder.projection_rows)."""
    batch = Batch()
    for event in events:
        batch.add(event)
    return batch


async def apply_and_advance(
    connection: asyncpg.Connection,
    events: Iterable[LogEvent] | Batch,
    old: int,
    new: int,
    name: str = PROJECTION_NAME,
    guard: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> FoldStats:
    """Fold `events` (the log in (old, new]) and move the saved position, atomically.
    `guard` runs first in the transaction (the projector's lease fence) and may raise."""
    batch = events if isinstance(events, Batch) else fold(events)
    async with connection.transaction():
        if guard is not None:
            await guard(connection)
        # First, so that a concurrent projector blocks on the row and then fails here.
        await advance_position(connection, old, new, name)
        return await write_batch(connection, batch)


async def apply_events(connection: asyncpg.Connection, events: Iterable[LogEvent]) -> FoldStats:
    """Fold `events` into the tables, without touching the saved position (tests, tools)."""
    async with connection.transaction():
        return await write_batch(connection, fold(events))


async def write_batch(connection: asyncpg.Connection, batch: Batch) -> FoldStats:
    """Write one batch's rows by set-based upserts; the caller holds the transaction."""
    if batch.unreadable:
        log.warning("projection skipped %d events it cannot read, at positions %s",
                    len(batch.unreadable), batch.unreadable[:10],
                    extra=log_event("projection.events.unreadable"))
    stored = await _stored_state(connection, batch)
    rows: list[tuple[Any, ...]] = []
    winners: list[str] = []
    people: list[tuple[Any, ...]] = []
    dialogs: list[tuple[Any, ...]] = []
    for facts in batch.conversations.values():
        row, won = conversation_row(facts, stored.get(facts.conversation_id))
        rows.append(row)
        if won and facts.upsert is not None:
            winners.append(facts.conversation_id)
            upsert_people, upsert_dialogs = membership_rows(facts.conversation_id, facts.upsert)
            people += upsert_people
            dialogs += upsert_dialogs
    if rows:
        await connection.execute(q.UPSERT_CONVERSATIONS, *_columns(rows, 25))
    if winners:
        await connection.execute(q.DELETE_PARTICIPANTS, winners)
        if people:
            await connection.execute(q.INSERT_PARTICIPANTS, *_columns(people, 4))
        await connection.execute(q.DELETE_DIALOGS, winners)
        if dialogs:
            unique = {row[0]: row for row in dialogs}  # two conversations may name one dialog
            await connection.execute(q.UPSERT_DIALOGS, *_columns(list(unique.values()), 11))
    messages, receipts = list(batch.messages.values()), list(batch.receipts.values())
    if messages:
        await connection.execute(q.UPSERT_MESSAGES, *_columns(messages, 15))
    if receipts:
        await connection.execute(q.UPSERT_RECEIPTS, *_columns(receipts, 6))
    await write_history_rows(connection, batch)
    return FoldStats(batch.events, len(rows), len(messages), len(receipts))


async def write_history_rows(connection: asyncpg.Connection, batch: Batch) -> None:
    """The agents and reconciliations of `batch` (few: written alike live and in a rebuild)."""
    if batch.agents:
        await connection.execute(q.UPSERT_AGENTS, *_columns(list(batch.agents.values()), 9))
    if batch.reconciliations:
        await connection.execute(q.UPSERT_RECONCILIATIONS,
                                 *_columns(list(batch.reconciliations.values()), 14))


async def _stored_state(connection: asyncpg.Connection, batch: Batch) -> dict[str, _Stored]:
    changed = [f.conversation_id for f in batch.conversations.values() if f.has_change]
    if not changed:
        return {}
    found = await connection.fetch(q.READ_CONVERSATION_STATE, changed)
    return {
        r["conversation_id"]: _Stored(
            r["meta_data_last_update_ts"], r["state_position"], r["deleted"], r["deleted_ts"],
            orjson.loads(r["assignments"]) if r["assignments"] else [],
        )
        for r in found
    }


def conversation_row(
    facts: ConversationFacts, stored: _Stored | None
) -> tuple[tuple[Any, ...], bool]:
    """The conversations row for the upsert, and whether the batch's UPSERT won."""
    identity = (facts.conversation_id, facts.account_id, facts.consumer_id,
                facts.first_position, facts.last_position)
    if not facts.has_change:  # messages only: identity and positions
        return (*identity, *_NO_STATE, False, None, None, "[]"), False
    stored_key = None
    if stored is not None and stored.state_position is not None:
        stored_key = (-1 if stored.version is None else stored.version, -stored.state_position)
    upsert = facts.upsert
    won = upsert is not None and (stored_key is None or upsert.key > stored_key)
    if won and upsert is not None:
        version, state = upsert.version, state_columns(upsert)
    else:
        version = stored.version if stored is not None else None
        state = _NO_STATE
    sticky = facts.sticky_delete or (
        stored is not None and stored.deleted and stored.deleted_ts is None)
    deletes = [t for t in (facts.delete_ts, stored.deleted_ts if stored else None) if t]
    delete_ts = max(deletes) if deletes else None
    deleted = sticky or (delete_ts is not None and delete_ts >= (version or -1))
    merged = {a[1]: a for a in (stored.assignments if stored is not None else [])}
    merged.update(facts.observations)
    assignments = sorted(merged.values(), key=lambda a: (a[0], a[1]))
    return (
        *identity, *state, deleted, None if sticky else delete_ts,
        orjson.dumps(assignments).decode(), orjson.dumps(derive_transfers(assignments)).decode(),
    ), won


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows → one list per column, for unnest()."""
    if not rows:
        return [[] for _ in range(width)]
    columns = [list(column) for column in zip(*rows, strict=True)]
    assert len(columns) == width, f"expected {width} columns, got {len(columns)}"
    return columns
