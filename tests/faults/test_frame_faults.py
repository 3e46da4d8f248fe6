"""Faults of the frames themselves: duplicated and reordered notifications, and malformed
frames mixed into the stream."""

from __future__ import annotations

import collections

import asyncpg
import pytest

from recorder.db.target import DatabaseTarget
from recorder.simulator import Faults, Simulator
from tests.faults import oracle
from tests.faults.harness import ACCOUNT, play, running_daemon, settings_for, static_identities

pytestmark = pytest.mark.slow

# Conversation changes logged after a newer change of the same conversation.
OLDER_AFTER_NEWER = """
SELECT count(*) FROM (
    SELECT version < max(version) OVER (
               PARTITION BY conversation_id ORDER BY position
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS older
    FROM (
        SELECT conversation_id, position,
               (payload #>> '{result,conversationDetails,metaDataLastUpdateTs}')::bigint AS version
        FROM events WHERE kind = 'conversation'
    ) changes
) ordered WHERE older
"""


async def test_duplicated_and_reordered_notifications(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    async with Simulator(account=ACCOUNT, seed=104) as sim:
        consumers = [sim.new_consumer() for _ in range(5)]
        settings = settings_for(sim, static_identities(sim, consumers))
        async with running_daemon(settings, database) as daemon:
            await play(
                sim, consumers, Faults(duplicate_probability=0.3, reorder_upserts=True),
                conversations=3, rate=1000, total_events=3000,
            )
            await oracle.wait_until_recorded(sim, consumers, db)
            code = await daemon.stop()

        assert sum(1 for frame in sim.journal if frame.duplicate) >= 100
        assert sum(1 for frame in sim.journal if frame.reordered) >= 10
        assert daemon.app.writer.stats.duplicates >= 100, "duplicates never reached the writer"
        assert await db.fetchval(OLDER_AFTER_NEWER) >= 5, "no reordered UPSERT reached the log"
        counted = await db.fetchval("SELECT sum(duplicates) FROM sessions")
        assert counted == daemon.app.writer.stats.duplicates, "`sessions` miscounts duplicates"
        assert code == 0
        await oracle.assert_oracle(sim, consumers, database, db)


async def test_malformed_frames_are_quarantined_whole_and_the_session_goes_on(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    async with Simulator(account=ACCOUNT, seed=105) as sim:
        consumers = [sim.new_consumer() for _ in range(4)]
        settings = settings_for(sim, static_identities(sim, consumers))
        async with running_daemon(settings, database) as daemon:
            await play(
                sim, consumers, Faults(malformed_probability=0.05),
                conversations=3, rate=1000, total_events=2500,
            )
            await oracle.wait_until_recorded(sim, consumers, db)
            code = await daemon.stop()

        sent = collections.Counter(
            (frame.consumer, frame.text.encode()) for frame in sim.journal if frame.malformed
        )
        rows = await db.fetch("SELECT consumer_id, raw FROM quarantine")
        kept = collections.Counter((row["consumer_id"], bytes(row["raw"])) for row in rows)
        assert sent.total() >= 50
        assert kept == sent, "quarantine does not hold exactly the malformed frames sent"
        counted = await db.fetchval("SELECT sum(quarantined) FROM sessions")
        assert counted == sent.total(), "`sessions` miscounts quarantined frames"
        assert [client.connections for client in daemon.app.clients] == [1] * len(consumers), (
            "a malformed frame cost a connection"
        )
        assert code == 0
        await oracle.assert_oracle(sim, consumers, database, db)
