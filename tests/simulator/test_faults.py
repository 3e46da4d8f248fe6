"""Every fault switch of the simulator, shown to happen, and never to change the truth."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest

from recorder.simulator import VARIANT_KINDS, Faults, Simulator
from recorder.simulator.cli import add_arguments, faults_from_args
from recorder.simulator.journal import changes_of, delivered_events
from tests.simclient import PlainClient

ACCOUNT = "71234567"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(account=ACCOUNT, seed=5, auto_reply=False) as s:
        yield s


async def busy_conversation(sim: Simulator, consumer: str, messages: int = 6) -> str:
    conv = sim.create_conversation(consumer)
    for i in range(messages):
        sim.consumer_message(conv, f"c{i}")
        sim.agent_message(conv, f"a{i}")
    return conv


async def subscribe_all(client: PlainClient, conv: str) -> None:
    await client.request("cqm.SubscribeExConversations", {})
    await client.request("ms.SubscribeMessagingEvents", {"dialogId": conv, "fromSeq": 0})


def journal_of(sim: Simulator, client_index: int = 1) -> list[object]:
    return [s for s in sim.journal if s.connection_id == client_index]


async def test_drop_after_frames_ends_the_socket_without_a_close_frame(sim: Simulator) -> None:
    consumer = sim.new_consumer()
    conv = await busy_conversation(sim, consumer)
    sim.faults.drop_after_frames = 3
    client = await PlainClient.connect(sim, sim.issue_token(consumer))
    await client.send({"kind": "req", "id": "1", "type": "cqm.SubscribeExConversations"})
    await client.send({"kind": "req", "id": "2", "type": "ms.SubscribeMessagingEvents",
                       "body": {"dialogId": conv}})
    code = await client.wait_closed()
    assert code not in (1000, 1011) and len(client.frames) == 3
    assert len(journal_of(sim)) == 3
    assert sim.closes[-1].code is None
    await client.close()


async def test_drop_probability_drops_instead_of_sending(sim: Simulator) -> None:
    sim.faults.drop_probability = 1.0
    client = await PlainClient.connect(sim, sim.issue_token())
    await client.send({"kind": "req", "id": "1", "type": "GetClock"})
    await client.wait_closed()
    assert client.frames == [] and sim.journal == []
    assert [c.code for c in sim.closes] == [None]
    await client.close()


@pytest.mark.parametrize("code", [4401, 4407, 1011])
async def test_close_after_frames_with_a_code(sim: Simulator, code: int) -> None:
    sim.faults.close_after_frames = 2
    sim.faults.close_code = code
    client = await PlainClient.connect(sim, sim.issue_token())
    for i in range(3):
        await client.send({"kind": "req", "id": str(i), "type": "GetClock"})
    assert await client.wait_closed() == code
    assert len(client.frames) == 2
    await client.close()


async def test_every_kth_request_gets_429_and_503(sim: Simulator) -> None:
    sim.faults.reject_every = 3
    sim.faults.server_error_every = 4
    client = await PlainClient.connect(sim, sim.issue_token())
    codes = [(await client.request("GetClock"))["code"] for _ in range(12)]
    assert codes == [200, 200, 429, 503, 200, 429, 200, 503, 429, 200, 200, 429]
    throttled = [f for f in client.frames if f["code"] != 200]
    assert all(isinstance(f["body"], str) and f["type"] == ".ReqBody$StringResp"
               for f in throttled)
    await client.close()


async def test_duplicate_notifications_are_the_same_frame_twice(sim: Simulator) -> None:
    consumer = sim.new_consumer()
    conv = await busy_conversation(sim, consumer, messages=2)
    sim.faults.duplicate_probability = 1.0
    client = await PlainClient.connect(sim, sim.issue_token(consumer))
    await subscribe_all(client, conv)
    await client.settle()
    notifications = [t for t in client.texts if '"notification"' in t]
    assert len(notifications) == 4 and notifications[0] == notifications[1]
    assert notifications[2] == notifications[3]
    assert [s.duplicate for s in journal_of(sim)] == [False, False, True, False, False, True]
    assert delivered_events(sim.journal, conv) == sim.stored_events(conv)
    await client.close()


async def test_reorder_upserts_sends_an_older_upsert_after_a_newer_one(sim: Simulator) -> None:
    consumer = sim.new_consumer()
    sim.faults.reorder_upserts = True
    sim.faults.reorder_hold_s = 0.1
    client = await PlainClient.connect(sim, sim.issue_token(consumer))
    await client.request("cqm.SubscribeExConversations", {})
    conv = sim.create_conversation(consumer)
    sim.assign_agent(conv)
    sim.set_ttr(conv, "URGENT", 300)  # held: nothing newer follows, so it comes late
    await client.wait_for(lambda f: len(client.ex_changes()) == 3, within=2)
    stamps = [c["result"]["conversationDetails"]["metaDataLastUpdateTs"]
              for c in client.ex_changes()]
    assert stamps[0] > stamps[1] < stamps[2]
    assert [s.reordered for s in journal_of(sim)][-2:] == [True, False]
    assert client.ex_changes()[-1]["result"]["conversationDetails"] == sim.conversation(conv)
    await client.close()


def variant_frames(client: PlainClient) -> list[dict[str, object]]:
    return [f for f in client.frames if isinstance(f, dict)]


@pytest.mark.parametrize("kind", VARIANT_KINDS)
async def test_each_shape_variant(sim: Simulator, kind: str) -> None:
    consumer = sim.new_consumer()
    conv = sim.create_conversation(consumer)
    sim.agent_message(conv, "hello")
    sim.agent_rich_content(conv)
    sim.faults.shape_variants = True
    sim.faults.variant_probability = 1.0
    sim.faults.variants = frozenset({kind})
    client = await PlainClient.connect(sim, sim.issue_token(consumer))
    await client.request("cqm.SubscribeExConversations", {})
    await client.request("ms.SubscribeMessagingEvents", {"dialogId": conv})
    await client.settle()
    frames = variant_frames(client)
    types = [f["type"] for f in frames]
    ex_body = frames[1]["body"]
    msg = frames[-1]
    if kind == "bare_change":
        assert isinstance(ex_body["changes"], dict)
    elif kind == "participants_map":
        details = ex_body["changes"][0]["result"]["conversationDetails"]
        assert details["participants"]["CONSUMER"] == [consumer]
        assert details["participantsPId"] == details["participants"]
    elif kind == "participants_pid_only":
        result = ex_body["changes"][0]["result"]
        assert "participants" not in result["conversationDetails"]
        assert result["lastUpdateTime"] == result["conversationDetails"]["metaDataLastUpdateTs"]
    elif kind == "originator_pid":
        change = msg["body"]["changes"][0]
        assert "originatorId" not in change and "originatorMetadata" not in change
        assert isinstance(change["originatorPId"], str)
    elif kind == "notification_alias":
        assert types[1] in ("aam.ExConversationChangeNotification",
                            ".ams.aam.ExConversationChangeNotification")
        sim.agent_message(conv, "live")
        live = await client.wait_for(lambda f: "OnlineEventDistribution" in f.get("type", ""))
        assert live["body"]["event"]["message"] == "live"
    elif kind == "response_alias":
        assert types[0] == ".ams.aam.SubscribeExConversations$Response"
        assert ".ams.GenericSubscribeResponse" in types
        generic = next(f for f in frames if f["type"] == ".ams.GenericSubscribeResponse")
        assert "body" not in generic
    elif kind == "rich_content_string":
        rich = msg["body"]["changes"][-1]["event"]
        assert isinstance(rich["content"], str)
        assert orjson.loads(rich["content"]) == sim.stored_events(conv)[-1]["event"]["content"]
    else:
        assert "simulatorFutureField" in ex_body
        assert all(c["futureChangeField"] == 1 for c in msg["body"]["changes"])
    assert all(s.variants == (kind,) for s in sim.journal if s.variant)
    assert any(s.variant for s in sim.journal)
    # Whatever the shape, the content is the stored truth.
    if kind not in ("originator_pid", "rich_content_string", "unknown_fields"):
        assert delivered_events(sim.journal, conv) == sim.stored_events(conv)
    await client.close()


async def test_unknown_event_types_are_stored_with_their_own_sequence(sim: Simulator) -> None:
    consumer = sim.new_consumer()
    sim.faults.unknown_event_probability = 1.0
    conv = sim.create_conversation(consumer)
    first = sim.consumer_message(conv, "hi")
    stored = sim.stored_events(conv)
    assert [e["event"]["type"] for e in stored] == ["ContentEvent", "FutureEvent"]
    assert stored[1]["sequence"] > first
    client = await PlainClient.connect(sim, sim.issue_token(consumer))
    await client.request("ms.SubscribeMessagingEvents", {"dialogId": conv})
    await client.settle()
    assert client.messaging_changes() == stored
    assert [s.unknown for s in journal_of(sim)] == [False, True]
    await client.close()


async def test_malformed_frames_come_before_real_ones(sim: Simulator) -> None:
    sim.faults.malformed_probability = 1.0
    client = await PlainClient.connect(sim, sim.issue_token())
    clock = await client.request("GetClock")
    assert clock["code"] == 200
    assert len(client.texts) == 2
    flagged = journal_of(sim)
    assert [s.malformed for s in flagged] == [True, False]
    first = flagged[0].frame
    assert first is None or not isinstance(first, dict) or "kind" not in first
    await client.close()


async def test_slow_responses_and_no_clock(sim: Simulator) -> None:
    sim.faults.response_delay_ms = 200
    client = await PlainClient.connect(sim, sim.issue_token())
    started = time.monotonic()
    await client.request("KeepAlive")
    assert time.monotonic() - started >= 0.19
    sim.faults.response_delay_ms = 0
    sim.faults.no_clock = True
    with pytest.raises(AssertionError, match="no matching frame"):
        await client.request("GetClock", within=0.3)
    assert (await client.request("KeepAlive"))["code"] == 200
    sim.faults.no_clock = False
    assert (await client.request("GetClock"))["code"] == 200
    await client.close()


async def test_faults_never_change_the_stored_truth() -> None:
    async def history(faults: Faults) -> list[tuple[str, dict[str, object]]]:
        async with Simulator(account=ACCOUNT, seed=11, faults=faults,
                             clock_start_ms=1_732_530_000_000) as s:
            consumer = s.new_consumer()
            client = await PlainClient.connect(s, s.issue_token(consumer))
            await client.request("cqm.SubscribeExConversations", {})
            conv = s.create_conversation(consumer)
            await client.request("ms.SubscribeMessagingEvents", {"dialogId": conv})
            await s.run_storyline(conv, delay_s=0)
            await client.close()
            return list(s.history)

    noisy = Faults(duplicate_probability=0.5, shape_variants=True, reorder_upserts=True,
                   malformed_probability=0.3, drop_after_frames=7)
    assert await history(Faults()) == await history(noisy)


def test_every_fault_has_a_cli_flag() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([
        "--drop-after-frames", "10", "--drop-probability", "0.01", "--close-after-frames", "20",
        "--close-code", "4407", "--reject-every", "7", "--server-error-every", "9",
        "--duplicate-probability", "0.2", "--reorder-upserts", "--shape-variants",
        "--variant-probability", "0.3", "--variants", "bare_change,response_alias",
        "--unknown-event-probability", "0.05", "--malformed-probability", "0.02",
        "--response-delay-ms", "150", "--no-clock",
    ])
    assert faults_from_args(args) == Faults(
        drop_after_frames=10, drop_probability=0.01, close_after_frames=20, close_code=4407,
        reject_every=7, server_error_every=9, duplicate_probability=0.2, reorder_upserts=True,
        shape_variants=True, variant_probability=0.3,
        variants=frozenset({"bare_change", "response_alias"}), unknown_event_probability=0.05,
        malformed_probability=0.02, response_delay_ms=150, no_clock=True,
    )
    assert faults_from_args(parser.parse_args([])) == Faults()


def test_every_rest_and_withholding_fault_has_a_cli_flag() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([
        "--withhold-probability", "0.1", "--withhold-tail-probability", "0.01",
        "--rest-reject-every", "5", "--rest-server-error-every", "6",
        "--history-partial-probability", "0.2", "--unknown-agent", "a1", "--unknown-agent", "a2",
    ])
    assert faults_from_args(args) == Faults(
        withhold_probability=0.1, withhold_tail_probability=0.01, rest_reject_every=5,
        rest_server_error_every=6, history_partial_probability=0.2, unknown_agents={"a1", "a2"},
    )
    assert faults_from_args(parser.parse_args([])).unknown_agents == set()


async def test_faults_change_at_runtime(sim: Simulator) -> None:
    consumer = sim.new_consumer()
    client = await PlainClient.connect(sim, sim.issue_token(consumer))
    conv = sim.create_conversation(consumer)
    await client.request("ms.SubscribeMessagingEvents", {"dialogId": conv})
    sim.consumer_message(conv, "once")
    await client.wait_for(lambda f: len(client.messaging_changes()) == 1)
    sim.faults.duplicate_probability = 1.0
    sim.consumer_message(conv, "twice")
    await client.wait_for(lambda f: len(client.messaging_changes()) == 3)
    sim.faults = Faults()  # replacing the whole object works too
    sim.consumer_message(conv, "once more")
    await client.settle()
    assert [c["event"]["message"] for c in client.messaging_changes()] == [
        "once", "twice", "twice", "once more"]
    assert sum(1 for s in sim.journal if changes_of(s.frame)) == 4
    await client.close()
    await asyncio.sleep(0)
