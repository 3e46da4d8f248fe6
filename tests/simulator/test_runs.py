"""The simulator's scripted runs, background traffic, determinism and `recorder simulate`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from recorder.simulator import Simulator
from tests.simclient import PlainClient

ACCOUNT = "71234567"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(account=ACCOUNT, seed=1, auto_reply=False) as s:
        yield s


@pytest.fixture
async def consumer(sim: Simulator) -> str:
    return sim.new_consumer()


# -- scripted runs, traffic and determinism -----------------------------------------------------


async def test_storyline_with_survey_ends_in_stage_close(sim: Simulator, consumer: str) -> None:
    conv = sim.create_conversation(consumer)
    await sim.run_storyline(conv, delay_s=0)
    details = sim.conversation(conv)
    main, survey = details["dialogs"]
    assert (details["state"], details["stage"]) == ("CLOSE", "CLOSE")
    assert (survey["closedBy"], survey["closedCause"]) == ("AGENT", "Completed")
    assert main["closedBy"] == "CONSUMER"
    events = sim.stored_events(survey["dialogId"])
    assert events[0]["sequence"] == 0
    assert [e["event"].get("status") for e in events][-2] == "ACTION"
    assert {e["event"]["type"] for e in sim.stored_events(conv)} == {
        "ContentEvent", "AcceptStatusEvent", "RichContentEvent"}
    assert sim.dialog_ids(consumer) == [conv, survey["dialogId"]]


async def test_traffic_makes_the_requested_events_for_every_consumer(sim: Simulator) -> None:
    subs = [sim.new_consumer(), sim.new_consumer()]
    watcher = await PlainClient.connect(sim, sim.token_for(subs[0]))
    try:
        await watcher.request("cqm.SubscribeExConversations", {})
        task = sim.start_traffic(consumers=subs, conversations_per_consumer=3, rate=2000,
                                 total_events=400)
        assert await asyncio.wait_for(task, 10) == 400
        assert sim.traffic_consumers == subs
        for sub in subs:
            convs = sim.conversation_ids(sub)
            assert 1 <= len(convs) <= 3
            for dialog in sim.dialog_ids(sub):
                sequences = [e["sequence"] for e in sim.stored_events(dialog)]
                assert sequences == sorted(set(sequences))
        await watcher.wait_for(lambda f: {c["result"]["convId"] for c in watcher.ex_changes()}
                               == set(sim.conversation_ids(subs[0])))
        counts = sim.start_traffic(consumers=1, conversations_per_consumer=1, rate=1000,
                                   duration_s=0.2)
        assert await asyncio.wait_for(counts, 5) > 0
        assert len(sim.traffic_consumers) == 3
    finally:
        await watcher.close()


async def run_seeded(seed: int) -> list[tuple[str, dict[str, object]]]:
    async with Simulator(account=ACCOUNT, seed=seed, clock_start_ms=1_732_530_000_000) as s:
        sub = s.new_consumer()
        conv = s.create_conversation(sub)
        await s.run_storyline(conv, delay_s=0)
        task = s.start_traffic(consumers=3, conversations_per_consumer=2, rate=0,
                               total_events=300)
        await task
        return list(s.history)


async def test_same_seed_same_model_history() -> None:
    first, second, other = await asyncio.gather(run_seeded(7), run_seeded(7), run_seeded(8))
    assert len(first) > 300
    assert first == second
    assert first != other


# -- the CLI ------------------------------------------------------------------------------------


async def test_cli_simulate_prints_a_working_token_and_stops_on_sigterm() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recorder", "simulate", "--listen", "127.0.0.1:0",
        "--account", ACCOUNT, "--seed", "3", "--traffic-consumers", "1", "--traffic-rate", "50",
        "--duplicate-probability", "0.1", cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        lines: dict[str, str] = {}
        while "example" not in lines:
            raw = await asyncio.wait_for(process.stdout.readline(), 15)
            assert raw, "simulate exited early"
            key, _, value = raw.decode().partition(":")
            lines[key.strip()] = value.strip()
        token = lines["token"]
        assert lines["example"].startswith("wscat -c 'ws://127.0.0.1:")
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(lines["endpoint"],
                                       headers={"Authorization": f"jwt {token}"}) as ws:
                await ws.send_json({"kind": "req", "id": "1", "type": "GetClock"})
                reply = await ws.receive_json(timeout=5)
                assert reply["reqId"] == "1" and reply["code"] == 200
            url = lines["csds_url"].split()[0]
            async with http.get(f"{url}/api/account/{ACCOUNT}/service/idp/baseURI.json") as r:
                assert (await r.json())["service"] == "idp"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(process.wait(), 15)
    assert returncode == 0

