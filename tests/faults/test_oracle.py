"""The oracle itself must be able to fail: a clean recording passes it, and each kind of damage
to the log or the projection is caught by the check meant for it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from recorder.db.target import DatabaseTarget
from recorder.simulator import Faults, Simulator
from tests.faults import oracle
from tests.faults.harness import ACCOUNT, play, running_daemon, settings_for, static_identities

pytestmark = pytest.mark.slow

# An extra copy of a stored messaging event at the next position, under another key.
COPY_EVENT = """
INSERT INTO events (position, received_at, account_id, consumer_id, session_id, kind, type,
                    change_type, conversation_id, dialog_id, sequence, originator_id, server_ts,
                    dedupe_key, payload)
SELECT (SELECT position + 1 FROM log_head), received_at, account_id, consumer_id, session_id,
       kind, type, change_type, conversation_id, dialog_id, sequence + {shift}, originator_id,
       server_ts, dedupe_key || '\\x01'::bytea, payload
FROM events WHERE kind = 'messaging' AND sequence IS NOT NULL ORDER BY position LIMIT 1;
UPDATE log_head SET position = position + 1;
"""
NEWEST_UPSERT = """
(SELECT position FROM events WHERE kind = 'conversation' ORDER BY position DESC LIMIT 1)
"""

#: name -> (SQL that damages the database, the check that must catch it, what it must say)
LOG_DAMAGE = {
    "an event lost": (
        "DELETE FROM events WHERE position = (SELECT max(position) FROM events "
        "WHERE kind = 'messaging' AND sequence IS NOT NULL)",
        "missing",
    ),
    "an event twice": (COPY_EVENT.format(shift=0), "more than once"),
    "an event never sent": (COPY_EVENT.format(shift=100_000), "never stored"),
    "a final state lost": (f"DELETE FROM events WHERE position = {NEWEST_UPSERT}", "final state"),
    "a final state altered": (
        "UPDATE events SET payload = jsonb_set(payload, "
        "'{result,conversationDetails,skillId}', '\"0\"') "
        f"WHERE position = {NEWEST_UPSERT}",
        "final state",
    ),
    "a hole in the positions": (
        "UPDATE log_head SET position = position + 1", "not contiguous"
    ),
    "a session row lost": (
        "DELETE FROM sessions WHERE session_id = (SELECT session_id FROM events LIMIT 1)",
        "missing from `sessions`",
    ),
}
PROJECTION_DAMAGE = {
    "the projection behind": (
        "UPDATE projection_positions SET position = position - 1", "projection at"
    ),
    "a conversation state": (
        "UPDATE conversations SET state = 'OPEN' WHERE conversation_id = "
        "(SELECT conversation_id FROM conversations WHERE state = 'CLOSE' LIMIT 1)",
        "conversation fields differ",
    ),
    "a participant lost": (
        "DELETE FROM participants WHERE ctid = (SELECT ctid FROM participants LIMIT 1)",
        "participants",
    ),
    "a dialog state": (
        "UPDATE dialogs SET state = 'OPEN' WHERE dialog_id = "
        "(SELECT dialog_id FROM dialogs WHERE state = 'CLOSE' LIMIT 1)",
        "dialog fields differ",
    ),
    "a message lost": (
        "DELETE FROM messages WHERE ctid = (SELECT ctid FROM messages LIMIT 1)",
        "messages per dialog differ",
    ),
    "a message text": (
        "UPDATE messages SET text = 'tampered' WHERE ctid = "
        "(SELECT ctid FROM messages WHERE text IS NOT NULL LIMIT 1)",
        "messages differ",
    ),
    "a receipt lost": (
        "DELETE FROM receipts WHERE ctid = (SELECT ctid FROM receipts LIMIT 1)", "receipts"
    ),
}


@contextlib.asynccontextmanager
async def damaged(db: asyncpg.Connection, statements: str) -> AsyncIterator[None]:
    """The damage, visible on `db` only, and rolled back afterwards."""
    transaction = db.transaction()
    await transaction.start()
    try:
        await db.execute(statements)
        yield
    finally:
        await transaction.rollback()


async def caught(check: Callable[[], Awaitable[object]], message: str) -> str | None:
    """None if `check` fails saying `message`; otherwise what went wrong instead."""
    try:
        await check()
    except AssertionError as exc:
        return None if re.search(re.escape(message), str(exc)) else f"said {exc}"
    return "passed"


async def test_the_oracle_catches_each_kind_of_damage(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    async with Simulator(account=ACCOUNT, seed=110) as sim:
        consumers = [sim.new_consumer() for _ in range(2)]
        settings = settings_for(sim, static_identities(sim, consumers))
        async with running_daemon(settings, database) as daemon:
            await play(sim, consumers, Faults(), conversations=3, rate=2000, total_events=600)
            await oracle.wait_until_recorded(sim, consumers, db)
            assert await daemon.stop() == 0
        head = await oracle.assert_oracle(sim, consumers, database, db)

        missed: dict[str, str] = {}
        for name, (damage, message) in LOG_DAMAGE.items():
            async with damaged(db, damage):
                outcome = await caught(
                    lambda: oracle.assert_recorded_everything(sim, consumers, db), message
                )
            if outcome is not None:
                missed[name] = outcome
        for name, (damage, message) in PROJECTION_DAMAGE.items():
            async with damaged(db, damage):
                outcome = await caught(
                    lambda: oracle.assert_projection_matches(sim, consumers, db), message
                )
            if outcome is not None:
                missed[name] = outcome
        assert not missed, f"damage the oracle did not report as expected: {missed}"

        # The rebuild compares on its own connections: this damage has to be committed.
        await db.execute(
            "UPDATE conversations SET skill_id = 'tampered' WHERE conversation_id = "
            "(SELECT conversation_id FROM conversations LIMIT 1)"
        )
        with pytest.raises(AssertionError, match="differs from the live one"):
            await oracle.assert_rebuild_equal(database, head)
