"""Reconciliation with LivePerson's history: events the socket never delivered (the simulator
withholds them, live and on replay) are backfilled from the history, once, and nothing else
is touched; agent profiles reach the API through the log."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import sys
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest

from recorder.db.target import DatabaseTarget
from recorder.eventlog.records import HISTORY_EVENT_TYPE
from recorder.history.profiles import AGENT_ROLES
from recorder.simulator import Faults, Simulator
from recorder.simulator.traffic import close_everything
from recorder.status import read_status
from tests.faults import oracle
from tests.faults.harness import (
    ACCOUNT,
    play,
    poll,
    running_daemon,
    settings_for,
    static_identities,
)

pytestmark = pytest.mark.slow

#: Fast enough for a test, with LivePerson's 429 rule intact (a 429 always waits >= 1 s).
QUICK = {"reconcile_after_s": 0.0, "reconcile_retry_s": 1.0, "rest_retry_s": (0.2, 0.4, 0.6),
         "rest_requests_per_minute": 6000.0}


async def backfilled(db: asyncpg.Connection) -> collections.Counter[tuple[str, int]]:
    rows = await db.fetch("SELECT dialog_id, sequence FROM events WHERE type = $1",
                          HISTORY_EVENT_TYPE)
    return collections.Counter((r["dialog_id"], r["sequence"]) for r in rows)


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


async def test_history_reveals_every_withheld_event_once(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    faults = Faults(withhold_probability=0.01, withhold_tail_probability=0.004,
                    rest_reject_every=9, rest_server_error_every=13,
                    history_partial_probability=0.2)
    async with Simulator(account=ACCOUNT, seed=161) as sim:
        consumers = [sim.new_consumer() for _ in range(5)]
        settings = settings_for(sim, static_identities(sim, consumers), **QUICK)
        async with running_daemon(settings, database) as daemon:
            await play(sim, consumers, faults, conversations=4, rate=1500, total_events=3000)
            sim.faults = dataclasses.replace(faults, withhold_probability=0.0,
                                             withhold_tail_probability=0.0)
            close_everything(sim, consumers)
            withheld = {(e["dialogId"], e["sequence"]) for e in sim.withheld_events()}
            assert len(withheld) >= 20, f"only {len(withheld)} events were withheld"
            tails = [d for c in consumers for cid in sim.conversation_ids(c)
                     for d in sim.world.conversation(cid).dialogs if d.withhold_tail]
            assert tails, "no dialog's tail was withheld"
            # Only the history can fill these: the socket never shows them, even on replay.
            await oracle.wait_until_recorded(sim, consumers, db, within_s=90)
            conversations = {cid for c in consumers for cid in sim.conversation_ids(c)}

            async def all_checked() -> bool:
                rows = await db.fetch(
                    "SELECT conversation_id FROM reconciliations "
                    "WHERE conversation_state = 'CLOSE' AND NOT history_partial")
                return conversations <= {r[0] for r in rows}

            await poll(all_checked, "every conversation reconciled", within_s=60)
            body, _ = daemon.app.metrics.render()
            metrics_text = body.decode()
            assert daemon.running
            assert await daemon.stop() == 0

        stored = await backfilled(db)
        assert set(stored) == withheld  # exactly the withheld: nothing else was missing
        assert max(stored.values()) == 1
        assert metric(metrics_text, "recorder_backfilled_events_total") == len(withheld)
        assert metric(metrics_text, 'recorder_rest_requests_total{endpoint="history_content",'
                      'status="429"}') >= 1
        # The projection took them like any other event, and rebuilds to the same.
        await oracle.assert_oracle(sim, consumers, database, db)
        checks = await db.fetch(
            "SELECT conversation_id, backfilled, only_in_log, history_partial, matched, "
            "history_records FROM reconciliations")
        assert {r["conversation_id"] for r in checks} == conversations
        assert all(r["only_in_log"] == 0 and not r["history_partial"] for r in checks)
        assert all(r["matched"] + r["backfilled"] >= r["history_records"] for r in checks)
        status = await read_status(database)
        assert status.reconciliation is not None
        assert status.reconciliation["conversations"] == len(conversations)
        assert status.reconciliation["closed_unchecked"] == 0
        assert status.reconciliation["only_in_log"] == 0
        assert "reconciliation: " in status.as_text()


async def test_a_withheld_event_delivered_late_is_stored_once(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    async with Simulator(account=ACCOUNT, seed=162, auto_reply=False) as sim:
        consumer = sim.new_consumer()
        settings = settings_for(sim, static_identities(sim, [consumer]), **QUICK)
        async with running_daemon(settings, database) as daemon:
            first = sim.create_conversation(consumer)
            sim.assign_agent(first)
            sim.consumer_message(first, "hello")
            sim.faults.withhold_probability = 1.0
            hidden = sim.agent_message(first, "only the history shows this at first")
            sim.faults.withhold_probability = 0.0
            sim.consumer_message(first, "still there?")
            key = (first, hidden)
            sim.close_conversation(first, survey=False)
            await poll(lambda: _has(db, key, HISTORY_EVENT_TYPE), "backfilled", within_s=30)
            duplicates_before = await _duplicates(daemon)
            # The socket delivers it after all (the dialog is still followed): a duplicate.
            assert sim.release_withheld() == 1
            await poll(lambda: _duplicates_above(daemon, duplicates_before),
                       "the late live copy dropped as a duplicate", within_s=30)

            # The other order: the live copy comes before any reconciliation.
            second = sim.create_conversation(consumer)
            sim.assign_agent(second)
            sim.faults.withhold_probability = 1.0
            late = sim.agent_message(second, "delivered late")
            sim.faults.withhold_probability = 0.0
            assert sim.release_withheld() == 1
            await poll(lambda: _has(db, (second, late), None), "live copy stored", within_s=30)
            sim.close_conversation(second, survey=False)
            await poll(lambda: _checked(db, second), "second conversation reconciled",
                       within_s=30)
            await daemon.stop()
        rows = await db.fetch(
            "SELECT dialog_id, sequence, type FROM events WHERE dialog_id = ANY($1) "
            "AND sequence IS NOT NULL", [first, second])
        counts = collections.Counter((r["dialog_id"], r["sequence"]) for r in rows)
        assert counts and max(counts.values()) == 1
        types = {(r["dialog_id"], r["sequence"]): r["type"] for r in rows}
        assert types[key] == HISTORY_EVENT_TYPE
        assert types[(second, late)] != HISTORY_EVENT_TYPE
        record = await db.fetchrow(
            "SELECT backfilled, matched FROM reconciliations WHERE conversation_id = $1", second)
        assert record["backfilled"] == 0 and record["matched"] >= 1
        await oracle.assert_oracle(sim, [consumer], database, db)


async def test_a_reconnect_gets_open_conversations_checked(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    async with Simulator(account=ACCOUNT, seed=163, auto_reply=False) as sim:
        consumer = sim.new_consumer()
        settings = settings_for(sim, static_identities(sim, [consumer]), **QUICK)
        async with running_daemon(settings, database) as daemon:
            conversation = sim.create_conversation(consumer)
            sim.assign_agent(conversation)
            sim.faults.withhold_probability = 1.0
            hidden = sim.agent_message(conversation, "lost in a server-side drop")
            sim.faults.withhold_probability = 0.0
            shown = sim.consumer_message(conversation, "you there?")
            await poll(lambda: _has(db, (conversation, shown), None), "live event", within_s=30)
            assert not await _has(db, (conversation, hidden), None)
            sim.drop_connections()  # a gap: after the reconnect, the open conversation is checked
            await poll(lambda: _has(db, (conversation, hidden), HISTORY_EVENT_TYPE),
                       "backfilled while open", within_s=30)
            row = await db.fetchrow(
                "SELECT conversation_state FROM reconciliations WHERE conversation_id = $1",
                conversation)
            assert row is not None and row["conversation_state"] == "OPEN"
            # The cursor still follows the socket: later live events are not skipped.
            after = sim.consumer_message(conversation, "and now?")
            await poll(lambda: _has(db, (conversation, after), None), "live after backfill",
                       within_s=30)
            await daemon.stop()
        await oracle.assert_oracle(sim, [consumer], database, db)


async def test_agent_profiles_reach_the_api_through_the_log(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    async with Simulator(account=ACCOUNT, seed=164) as sim:
        unknown = sim.world.agents[1]
        faults = Faults(rest_reject_every=3, unknown_agents={unknown})
        consumers = [sim.new_consumer() for _ in range(4)]
        settings = settings_for(sim, static_identities(sim, consumers), reconcile=False,
                                rest_requests_per_minute=6000.0)
        async with running_daemon(settings, database) as daemon:
            await play(sim, consumers, faults, conversations=3, rate=800, total_events=1500)
            sim.faults = faults  # play switched faults off; 429s and the 404 go on
            # Every agent any UPSERT named, in whatever role it had then.
            agents = {p["id"] for kind, change in sim.history if kind == "conversation"
                      for p in change["conversationDetails"]["participants"]
                      if p["role"] in AGENT_ROLES}
            assert unknown in agents and len(agents) >= 3

            async def all_fetched() -> bool:
                found = {r[0] for r in await db.fetch("SELECT agent_id FROM agents")}
                return agents <= found

            await poll(all_fetched, "every agent's profile projected", within_s=60)
            api = f"http://{settings.api_listen}"
            named = 0
            async with aiohttp.ClientSession() as http:
                for consumer in consumers:
                    for conversation_id in sim.conversation_ids(consumer):
                        async with http.get(f"{api}/conversations/{conversation_id}") as reply:
                            body = await reply.json()
                        for person in body["participants"]:
                            if person["id"] not in agents:
                                continue
                            profile = sim.agent_profile(person["id"])
                            assert person["nickname"] == (profile or {}).get("nickname")
                            assert person["picture_url"] == (profile or {}).get("pictureUrl")
                        async with http.get(
                                f"{api}/conversations/{conversation_id}/messages") as reply:
                            messages = (await reply.json())["items"]
                        for message in messages:
                            author = message["originator_id"]
                            if author in agents:  # a survey bot outside the pool is a 404
                                profile = sim.agent_profile(author)
                                assert message["originator_nickname"] == (
                                    (profile or {}).get("nickname"))
                                named += profile is not None
            assert named > 0, "no agent message carried a nickname"
            await daemon.stop()
        profile_calls = [r for r in sim.rest_requests if r.endpoint == "profile"]
        answered = collections.Counter(r.key for r in profile_calls if r.status in (200, 404))
        # The cache: one answered request per agent, however often it appeared; a 404 too.
        assert answered == dict.fromkeys(agents, 1)
        assert (await db.fetchrow("SELECT known, nickname FROM agents WHERE agent_id = $1",
                                  unknown)) == (False, None)
        throttled = [r for r in profile_calls if r.status == 429]
        assert throttled, "no profile request was answered 429"
        for refused in throttled:  # LivePerson's rule: the retry comes a second later at least
            later = [r.at for r in profile_calls if r.key == refused.key and r.at > refused.at]
            assert later and min(later) - refused.at >= 1.0
        kinds = await db.fetch("SELECT change_type, count(*) FROM events WHERE kind = 'agent' "
                               "GROUP BY change_type")
        unknowns = {a for a in agents if sim.agent_profile(a) is None}
        assert unknown in unknowns
        assert dict(kinds) == {"PROFILE": len(agents) - len(unknowns), "UNKNOWN": len(unknowns)}
        await oracle.assert_oracle(sim, consumers, database, db)


async def test_reconcile_command_backfills_on_demand(
    database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path
) -> None:
    async with Simulator(account=ACCOUNT, seed=165, auto_reply=False) as sim:
        consumer = sim.new_consumer()
        settings = settings_for(sim, static_identities(sim, [consumer]), reconcile=False)
        async with running_daemon(settings, database) as daemon:
            conversation = sim.create_conversation(consumer)
            sim.assign_agent(conversation)
            sim.faults.withhold_probability = 1.0
            hidden = [sim.agent_message(conversation, f"hidden {n}") for n in range(3)]
            sim.faults.withhold_probability = 0.0
            sim.close_conversation(conversation, survey=False)
            await poll(lambda: _checked_closed_in_projection(db, conversation),
                       "conversation closed in the projection", within_s=30)
            token_file = tmp_path / "jwt"
            token_file.write_text(sim.token_for(consumer))
            env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
            env.update(RECORDER_DATABASE_URL=database.dsn, RECORDER_ACCOUNT=ACCOUNT,
                       RECORDER_CSDS_URL=sim.http_url, RECORDER_CONSUMER_JWT_FILE=str(token_file))
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "recorder", "reconcile", "--conversation", conversation,
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0, err.decode()
            report = orjson.loads(out)
            assert report["conversations"] == 1 and report["backfilled"] == 3
            assert report["results"] == {"reconciled": 1}
            assert sim.token_for(consumer) not in out.decode() + err.decode()
            stored = await backfilled(db)
            assert set(stored) == {(conversation, s) for s in hidden}
            await poll(lambda: _checked(db, conversation), "reconciliation projected",
                       within_s=30)
            with contextlib.suppress(AssertionError):
                await daemon.stop()
        await oracle.assert_oracle(sim, [consumer], database, db)


async def _has(db: asyncpg.Connection, key: tuple[str, int], kind: str | None) -> bool:
    found = await db.fetchval(
        "SELECT type FROM events WHERE dialog_id = $1 AND sequence = $2", *key)
    return found is not None and (kind is None or found == kind)


async def _checked(db: asyncpg.Connection, conversation_id: str) -> bool:
    return bool(await db.fetchval(
        "SELECT count(*) FROM reconciliations WHERE conversation_id = $1", conversation_id))


async def _checked_closed_in_projection(db: asyncpg.Connection, conversation_id: str) -> bool:
    return bool(await db.fetchval(
        "SELECT state = 'CLOSE' FROM conversations WHERE conversation_id = $1",
        conversation_id))


async def _duplicates(daemon: object) -> float:
    body, _ = daemon.app.metrics.render()  # type: ignore[attr-defined]
    return metric(body.decode(), 'recorder_duplicates_dropped_total{kind="messaging"}')


async def _duplicates_above(daemon: object, before: float) -> bool:
    return await _duplicates(daemon) > before


async def test_a_conversation_the_socket_never_reported_is_found_in_the_history(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    async with Simulator(account=ACCOUNT, seed=166, auto_reply=False) as sim:
        consumer = sim.new_consumer()
        # It happened while no recorder ran, and the socket never reports it.
        unreported = sim.create_conversation(consumer)
        sim.faults.hidden_conversations.add(unreported)
        sim.assign_agent(unreported)
        sent = [sim.consumer_message(unreported, "anyone?"),
                sim.agent_message(unreported, "here"),
                sim.agent_read(unreported, [0])]
        sim.close_conversation(unreported, survey=False)
        shown = sim.create_conversation(consumer)
        sim.consumer_message(shown, "hello again")
        settings = settings_for(sim, static_identities(sim, [consumer]), **QUICK)
        async with running_daemon(settings, database) as daemon:
            await poll(lambda: _checked(db, unreported), "found in the history's list",
                       within_s=30)
            await asyncio.sleep(2.5)  # more sweeps and discoveries: it is not checked again
            await daemon.stop()
        stored = await backfilled(db)
        assert set(stored) == {(unreported, s) for s in sent}
        record = await db.fetchrow(
            "SELECT payload FROM events WHERE kind = 'reconciliation' AND conversation_id = $1",
            unreported)
        check = orjson.loads(record["payload"])
        assert check["unreported"] is True and check["backfilled"] == len(sent)
        assert check["historyMetadata"]["conversationId"] == unreported
        assert check["conversationState"] == "CLOSE"
        checks = await db.fetchval(
            "SELECT count(*) FROM events WHERE kind = 'reconciliation' AND conversation_id = $1",
            unreported)
        assert checks == 1
        messages = await db.fetch(
            "SELECT sequence, text FROM messages WHERE conversation_id = $1 ORDER BY sequence",
            unreported)
        assert [r["text"] for r in messages] == ["anyone?", "here"]
        await oracle.assert_rebuild_equal(database)
