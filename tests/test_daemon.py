"""`recorder run` and `recorder demo` as real processes: record, stop on a signal, exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import asyncpg

from recorder.database import DatabaseTarget
from recorder.simulator import Simulator
from tests.helpers import assert_log_contiguous, free_port
from tests.umsharness import ACCOUNT, truth


def environment(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    env["RECORDER_API_LISTEN"] = f"127.0.0.1:{free_port()}"
    env.update(values)
    return env


async def wait_for_rows(db: asyncpg.Connection, expected: set[tuple[str, int]]) -> None:
    for _ in range(600):
        rows = await db.fetch(
            "SELECT dialog_id, sequence FROM events WHERE sequence IS NOT NULL"
        )
        if expected <= {(r["dialog_id"], r["sequence"]) for r in rows}:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the daemon did not record everything in time")


async def test_run_records_and_stops_cleanly_on_sigterm(
    tmp_path: Path, database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    async with Simulator(account=ACCOUNT, seed=21) as sim:
        consumer = sim.new_consumer()
        token_file = tmp_path / "jwt"
        token_file.write_text(sim.issue_token(consumer))
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "recorder", "run",
            env=environment(
                RECORDER_DATABASE_URL=database.dsn, RECORDER_ACCOUNT=ACCOUNT,
                RECORDER_UMS_URL=sim.ws_url, RECORDER_CONSUMER_JWT_FILE=str(token_file),
                RECORDER_STATE_DIR=str(tmp_path / "state"),
                RECORDER_API_LISTEN=f"127.0.0.1:{port}", RECORDER_API_TOKEN=API_TOKEN,
            ),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            traffic = sim.start_traffic([consumer], 2, rate=200, total_events=300)
            await asyncio.wait_for(traffic, 30)
            await wait_for_rows(db, truth(sim, consumer))
            await check_api(f"http://127.0.0.1:{port}")
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert "Traceback" not in stderr.decode()
    await assert_log_contiguous(db)
    closed = await db.fetchval("SELECT count(*) FROM sessions WHERE close_code = 1000")
    assert closed >= 1, "the socket was closed, not dropped"
    projected = await db.fetchval("SELECT position FROM projection_positions")
    assert projected == await db.fetchval("SELECT position FROM log_head")


API_TOKEN = "smoke-test-api-token-0123456789"


async def check_api(base: str) -> None:
    """The real process serves the read API: open /livez, bearer auth everywhere else."""
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    async with aiohttp.ClientSession() as http:
        for _ in range(100):  # the API starts with the daemon; give it a moment
            try:
                async with http.get(f"{base}/livez") as reply:
                    if reply.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        async with http.get(f"{base}/conversations") as reply:
            assert reply.status == 401
        async with http.get(f"{base}/conversations", headers=auth) as reply:
            assert reply.status == 200
            page = await reply.json()
            assert page["items"], "recorded conversations are served"
        conversation = page["items"][0]["conversation_id"]
        async with http.get(f"{base}/conversations/{conversation}/messages", headers=auth) as r:
            assert r.status == 200
        async with http.get(f"{base}/metrics", headers=auth) as reply:
            text = await reply.text()
            assert "recorder_events_stored_total" in text and API_TOKEN not in text


async def test_run_without_an_account_or_identity_says_so(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recorder", "run",
        env=environment(RECORDER_STATE_DIR=str(tmp_path / "state")),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert "RECORDER_ACCOUNT" in stderr.decode()


async def test_demo_records_live_traffic(tmp_path: Path, database: DatabaseTarget) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recorder", "demo", "--duration", "6", "--every", "1",
        "--rate", "50",
        env=environment(RECORDER_DATABASE_URL=database.dsn),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, stderr.decode()[-2000:]
    progress = [line for line in stdout.decode().splitlines() if line.startswith("recorded ")]
    assert progress, stdout.decode()
    last = progress[-1].split()
    assert int(last[1]) > 0, "events were recorded"
    assert "conversations" in progress[-1]
