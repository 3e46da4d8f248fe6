"""The client against every fault the simulator can inject: nothing lost, duplicates seen as such.

Each scenario runs seeded traffic for one consumer with the fault on, switches the fault off,
and requires every event the simulator stored to have arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from recorder.simulator import Faults, Simulator
from recorder.ums.client import ConsumerClient
from tests.ums.harness import ACCOUNT, MemorySink, converged, recording, static_tokens


def more_than_one_connection(sim: Simulator, client: ConsumerClient, sink: MemorySink) -> None:
    assert client.connections > 1, "the fault should have forced a reconnect"


def duplicates_seen(sim: Simulator, client: ConsumerClient, sink: MemorySink) -> None:
    assert any(f.duplicate for f in sim.journal)
    assert sink.duplicates > 0


def malformed_kept(sim: Simulator, client: ConsumerClient, sink: MemorySink) -> None:
    sent = [f.text for f in sim.journal if f.malformed]
    assert sent and len(sink.malformed_frames) == len(sent)
    received = {e.raw if isinstance(e.raw, str) else e.raw.decode() for e in sink.malformed_frames}
    assert received <= set(sent)
    assert client.connections == 1, "a malformed frame must not cost the connection"


def variants_read(sim: Simulator, client: ConsumerClient, sink: MemorySink) -> None:
    assert any(f.variant for f in sim.journal)
    assert sink.notification_types - {
        "cqm.ExConversationChangeNotification", "ms.MessagingEventNotification"
    }, "no aliased notification type reached the client"


def unknown_events_kept(sim: Simulator, client: ConsumerClient, sink: MemorySink) -> None:
    kinds = {change["event"].get("type") for change in sink.events.values()}
    assert "FutureEvent" in kinds


def older_upserts_delivered(sim: Simulator, client: ConsumerClient, sink: MemorySink) -> None:
    assert any(f.reordered for f in sim.journal)
    stamps: dict[str, list[int]] = {}
    for change in sink.conversation_changes:
        details = (change.get("result") or {}).get("conversationDetails") or {}
        stamps.setdefault(change["result"]["convId"], []).append(
            details.get("metaDataLastUpdateTs", 0)
        )
    assert any(s != sorted(s) for s in stamps.values()), "no out-of-order UPSERT reached us"


def throttled_and_retried(sim: Simulator, client: ConsumerClient, sink: MemorySink) -> None:
    codes = [f.frame.get("code") for f in sim.journal if f.kind == "resp"]
    assert 429 in codes or 503 in codes


def no_extra_check(sim: Simulator, client: ConsumerClient, sink: MemorySink) -> None:
    return None


Check = Callable[[Simulator, ConsumerClient, MemorySink], None]

SCENARIOS: dict[str, tuple[dict[str, Any], Check]] = {
    "drop_after_frames": ({"drop_after_frames": 40}, more_than_one_connection),
    "drop_at_random": ({"drop_probability": 0.03}, more_than_one_connection),
    "close_1011_after_frames": (
        {"close_after_frames": 50, "close_code": 1011}, more_than_one_connection
    ),
    "duplicates": ({"duplicate_probability": 0.3}, duplicates_seen),
    "reordered_upserts": ({"reorder_upserts": True}, older_upserts_delivered),
    "shape_variants": ({"shape_variants": True, "variant_probability": 0.7}, variants_read),
    "unknown_events": ({"unknown_event_probability": 0.2}, unknown_events_kept),
    "malformed_frames": ({"malformed_probability": 0.1}, malformed_kept),
    "slow_answers": ({"response_delay_ms": 150.0}, no_extra_check),
    "429_every_2nd": ({"reject_every": 2}, throttled_and_retried),
    "503_every_3rd": ({"server_error_every": 3}, throttled_and_retried),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_no_event_lost_under_fault(scenario: str) -> None:
    settings, check = SCENARIOS[scenario]
    async with Simulator(account=ACCOUNT, seed=11) as sim:
        consumer = sim.new_consumer()
        sim.faults = Faults(**settings)
        async with recording(sim, static_tokens(sim, consumer)) as (client, sink, _):
            traffic = sim.start_traffic([consumer], 2, rate=400, total_events=400)
            await asyncio.wait_for(traffic, 30)
            if scenario in ("reordered_upserts", "slow_answers"):
                await asyncio.sleep(0.5)  # let held-back UPSERTs and slow replies out
            sim.faults = Faults()
            await converged(sim, consumer, sink)
            check(sim, client, sink)


async def test_keepalive_closes_a_server_that_stops_answering() -> None:
    async with Simulator(account=ACCOUNT, seed=3) as sim:
        consumer = sim.new_consumer()
        sim.create_conversation(consumer)
        sim.faults = Faults(no_clock=True)
        async with recording(sim, static_tokens(sim, consumer)) as (client, sink, _):
            deadline = asyncio.get_running_loop().time() + 10
            while not any(c.code == 4000 for c in client.closes):
                assert asyncio.get_running_loop().time() < deadline, "keepalive never fired"
                await asyncio.sleep(0.05)
            sim.faults = Faults()
            sim.consumer_message(sim.conversation_ids(consumer)[0], "after the silence")
            await converged(sim, consumer, sink)
        assert client.connections >= 2
