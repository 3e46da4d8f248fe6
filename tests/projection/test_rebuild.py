"""`recorder rebuild`: replay equals live (also past its conversation cap, and for any log:
a property), detects a corrupted row, swaps, converges while the log grows, copies times as
the upserts write them, and its command-line face."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorder.config import Secret, Settings
from recorder.db.target import DatabaseTarget
from recorder.errors import RebuildError
from recorder.eventlog.writer import EventWriter
from recorder.projection.fold import load_position
from recorder.projection.projector import PROJECTOR_LOCK_KEY, Projector
from recorder.projection.rebuild import (
    REBUILD_LOCK_KEY,
    add_rebuild_arguments,
    rebuild,
    rebuild_command,
)
from recorder.projection.rebuild_tables import copy_epoch_ms_as_timestamps
from recorder.projection.rows import MAX_MS
from recorder.projection.sql import ms_to_timestamp
from tests.projection.test_properties import conversation_log
from tests.projection_helpers import (
    AGENT1,
    AGENT2,
    append_changes,
    content,
    delete,
    example_changes,
    project,
    receipt,
    record,
    snapshot,
    upsert,
)

EXAMPLES = [  # a story told out of order, with the other variants mixed in
    "notif_exconv_multi_change_batch.json", "notif_exconv_upsert_agent_joined.json",
    "notif_msg_backfill_batch.json", "notif_exconv_upsert_transfer_to_skill.json",
    "notif_msg_rich_content_from_agent.json",
    "notif_msg_accept_status_accept_from_consumer.json",
    "notif_exconv_upsert_transfer_suggested_agent.json",
    "notif_msg_hosted_file_from_consumer.json", "notif_msg_resume_after_reconnect.json",
    "notif_exconv_upsert_main_closed_post_survey_open.json",
    "notif_msg_post_survey_question.json", "notif_msg_post_survey_action_echo.json",
    "notif_exconv_upsert_survey_completed_stage_close.json", "notif_exconv_delete.json",
    "notif_msg_chat_state_composing_agent.json",
    "notif_exconv_upsert_legacy_participants_map.json",
]


def mixed_log(conversations: int = 20) -> list[dict[str, Any]]:
    changes = [c for name in EXAMPLES for c in example_changes(name)]
    for n in range(conversations):
        conv = f"conv-{n}"
        changes += [upsert(conv, 3000, skill="2", agents=[AGENT2]), content(conv, 0),
                    receipt(conv, 2, [0, 1], "READ"), upsert(conv, 1000, agents=[AGENT1]),
                    content(conv, 1, "second"), upsert(conv, 2000)]
        if n % 5 == 0:
            changes.append(delete(conv, 3000 if n % 10 else None))
    return changes


async def test_rebuild_equals_live_after_a_mixed_log(database: DatabaseTarget,
                                                     db: asyncpg.Connection) -> None:
    head = await append_changes(database, mixed_log())
    await project(database, batch_size=7)  # live in small batches, the rebuild in big ones
    before = await snapshot(db)
    seen: list[tuple[int, int]] = []
    report = await rebuild(target=database, batch_size=50, progress=lambda *a: seen.append(a))
    assert report.equal and not report.differences and not report.swapped
    assert (report.events, report.position) == (head, head) and report.events_per_s > 0
    assert seen[-1] == (head, head)
    assert await snapshot(db) == before  # compare only: live untouched
    assert "recorder_rebuild" not in {r["nspname"] for r in await db.fetch(
        "SELECT nspname FROM pg_namespace")}


async def test_rebuild_past_its_conversation_cap_equals_live(
        database: DatabaseTarget, db: asyncpg.Connection) -> None:
    """Small pages and a cap of 2 conversations: the bulk load writes conversations out many
    times, new ones by COPY and stored ones merged; receipts repeat across pages."""
    changes = mixed_log(8)
    changes += [receipt(f"conv-{n}", 3 + n, [0, 1], "READ") for n in range(8)]  # repeated keys
    head = await append_changes(database, changes)
    await project(database, batch_size=11)
    before = await snapshot(db)
    report = await rebuild(database, batch_size=5, max_conversations=2)
    assert report.equal, report.as_text()
    assert report.position == head and await snapshot(db) == before


async def test_copied_times_are_the_ones_the_upserts_write(db: asyncpg.Connection,
                                                             database: DatabaseTarget) -> None:
    """The bulk load COPYs epoch ms as timestamps itself; they must equal, to the µs,
    PostgreSQL's conversion, which the projector's upserts use."""
    rng = random.Random(14)
    values = [1, 2, 999, 1000, 1001, MAX_MS - 1, MAX_MS]
    values += [rng.randrange(1, MAX_MS) for _ in range(20_000)]
    values += [1_700_000_000_000 + rng.randrange(10**9) for _ in range(20_000)]
    copier = await asyncpg.connect(database.dsn)
    try:
        await copy_epoch_ms_as_timestamps(copier)
        await copier.execute("CREATE TABLE times (ms bigint, ts timestamptz)")
        await copier.copy_records_to_table("times", records=[(v, v) for v in values])
    finally:
        await copier.close()
    assert await db.fetchval(
        f"SELECT count(*) FROM times WHERE ts IS DISTINCT FROM {ms_to_timestamp('ms')}") == 0
    assert await db.fetchval("SELECT count(*) FROM times") == len(values)


@st.composite
def many_conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One to three conversations' logs (tests/projection/test_properties), in any order."""
    changes: list[dict[str, Any]] = []
    for n in range(draw(st.integers(1, 3))):
        for row in draw(conversation_log()):
            text = row.payload.replace('"conv-p"', f'"conv-p{n}"')
            changes.append(orjson.loads(text.replace('"survey-p"', f'"survey-p{n}"')))
    return draw(st.permutations(changes))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(changes=many_conversations(), live_batch=st.integers(1, 8),
       page=st.integers(1, 12), cap=st.integers(1, 4))
async def test_the_rebuild_of_any_log_equals_the_incremental_projection(
        database: DatabaseTarget, db: asyncpg.Connection, changes: list[dict[str, Any]],
        live_batch: int, page: int, cap: int) -> None:
    await db.execute("TRUNCATE events, dialog_cursors, quarantine, projection_positions, "
                     "conversations, dialogs, participants, messages, receipts")
    await db.execute("UPDATE log_head SET position = 0 WHERE id = 1")
    head = await append_changes(database, changes)
    await project(database, batch_size=live_batch)
    report = await rebuild(database, batch_size=page, max_conversations=cap)
    assert report.equal, report.as_text()
    assert report.position == head


async def test_rebuild_brings_a_stopped_projection_up_to_the_head(
        database: DatabaseTarget, db: asyncpg.Connection) -> None:
    await append_changes(database, mixed_log(3)[:30])
    await project(database)
    head = await append_changes(database, mixed_log(3)[30:])  # live is behind, nothing runs
    report = await rebuild(database)
    assert report.equal and report.position == head
    assert await db.fetchval(
        "SELECT position FROM projection_positions WHERE name = 'conversations'") == head


async def test_rebuild_detects_a_corrupted_row_and_swap_repairs_it(
        database: DatabaseTarget, db: asyncpg.Connection) -> None:
    head = await append_changes(database, mixed_log(5))
    await project(database)
    good = await snapshot(db)
    await db.execute("UPDATE conversations SET state = 'CLOSE' WHERE conversation_id = 'conv-3'")
    await db.execute("DELETE FROM messages WHERE dialog_id = 'conv-1' AND sequence = 1")
    await db.execute("INSERT INTO receipts VALUES ('conv-2', 9, 'someone', 'READ', now(), 1)")

    report = await rebuild(database)
    assert not report.equal and not report.swapped
    assert set(report.differences) == {"conversations", "messages", "receipts"}
    conversations = report.differences["conversations"]
    assert (conversations.only_live, conversations.only_rebuilt) == (1, 1)
    assert conversations.examples == ["conv-3"]
    assert (report.differences["messages"].only_live,
            report.differences["messages"].only_rebuilt) == (0, 1)
    assert report.differences["messages"].examples == ["conv-1/1"]
    assert report.differences["receipts"].examples == ["conv-2/9/someone/READ"]
    assert "conv-3" in report.as_text()

    swapped = await rebuild(database, swap=True)
    assert swapped.swapped and not swapped.equal  # what it found, and that it fixed it
    assert await snapshot(db) == good
    assert await db.fetchval(
        "SELECT position FROM projection_positions WHERE name = 'conversations'") == head
    assert (await rebuild(database)).equal
    # The live tables are the same tables (grants and index names kept), projecting on.
    await append_changes(database, [content("conv-1", 7)])
    assert (await project(database)).position == head + 1
    assert (await rebuild(database)).equal


async def test_rebuild_while_the_log_grows(database: DatabaseTarget,
                                           db: asyncpg.Connection) -> None:
    await append_changes(database, mixed_log(10))
    writer, projector = EventWriter(database, batch_wait_ms=0.5), Projector(database)
    writer.add_listener(lambda _: projector.wake())
    stop = asyncio.Event()
    tasks = [asyncio.create_task(writer.run(stop)), asyncio.create_task(projector.run(stop))]

    async def traffic() -> None:
        for sequence in range(10_000):
            await writer.put(record(content("busy", sequence)))
            if sequence % 20 == 0:
                await asyncio.sleep(0.005)

    feeding = asyncio.create_task(traffic())
    try:
        await asyncio.sleep(0.2)
        start_head = writer.head
        report = await rebuild(database, batch_size=100)
        assert report.equal, report.as_text()
        assert report.position >= start_head
    finally:
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeding
        stop.set()
        await asyncio.gather(*tasks)


async def test_rebuild_waits_for_a_running_projector_that_is_behind(
        database: DatabaseTarget, db: asyncpg.Connection) -> None:
    head = await append_changes(database, mixed_log(3))
    elsewhere = await asyncpg.connect(database.dsn)  # "a projector runs", and is at 0
    try:
        await elsewhere.execute("SELECT pg_advisory_lock($1)", PROJECTOR_LOCK_KEY)
        with pytest.raises(RebuildError, match=f"did not reach position {head} in time"):
            await rebuild(database, catch_up_timeout_s=0.2)
        assert await db.fetchval(  # it did not fold the live tables behind the projector's back
            "SELECT position FROM projection_positions WHERE name = 'conversations'") == 0

        projector = Projector(database)
        projector.position = await load_position(elsewhere)

        async def catch_up_later() -> None:
            await asyncio.sleep(0.3)
            while await projector.step(elsewhere):
                pass

        later = asyncio.create_task(catch_up_later())
        report = await rebuild(database, catch_up_timeout_s=10)
        await later
        assert report.equal and report.position == head
    finally:
        await elsewhere.close()


async def test_rebuild_of_an_empty_log(database: DatabaseTarget) -> None:
    report = await rebuild(database)
    assert (report.equal, report.events, report.position) == (True, 0, 0)


async def test_one_rebuild_at_a_time(database: DatabaseTarget, db: asyncpg.Connection) -> None:
    await db.execute("SELECT pg_advisory_lock($1)", REBUILD_LOCK_KEY)
    with pytest.raises(RebuildError, match="another rebuild is running"):
        await rebuild(database)


@contextlib.asynccontextmanager
async def corrupted(database: DatabaseTarget, db: asyncpg.Connection) -> AsyncIterator[None]:
    await append_changes(database, mixed_log(2))
    await project(database)
    await db.execute("UPDATE messages SET text = 'tampered' WHERE dialog_id = 'conv-0'")
    yield


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_rebuild_arguments(parser)
    return parser.parse_args(argv)


async def test_command_exit_codes_and_report(database: DatabaseTarget, db: asyncpg.Connection,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(database_url=Secret(database.dsn))
    async with corrupted(database, db):
        assert await rebuild_command(settings, parse("--json")) == 1
        report = orjson.loads(capsys.readouterr().out)
        assert report["equal"] is False
        assert report["differences"]["messages"]["examples"] == ["conv-0/0", "conv-0/1"]

        assert await rebuild_command(settings, parse("--swap", "--batch-size", "10")) == 0
        assert "swapped" in capsys.readouterr().out
        assert await rebuild_command(settings, parse()) == 0
        assert "equals the rebuild" in capsys.readouterr().out
        assert await rebuild_command(settings, parse("--batch-size", "0")) == 2
        assert await rebuild_command(settings, parse("--max-conversations", "0")) == 2
        assert await rebuild_command(settings, parse("--max-conversations", "1")) == 0
