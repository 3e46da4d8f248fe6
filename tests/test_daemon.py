"""`recorder run` and `recorder demo` as real processes: record, stop on a signal, exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from recorder.db.target import DatabaseTarget
from recorder.simulator import Simulator
from tests.helpers import assert_log_contiguous, free_port
from tests.ums.harness import ACCOUNT, truth


def same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


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
                RECORDER_UMS_URL=sim.ws_url, RECORDER_CSDS_URL=sim.http_url,
                RECORDER_CONSUMER_JWT_FILE=str(token_file),
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
        for _ in range(300):  # recorded is not yet projected: the projector may lag a little
            async with http.get(f"{base}/conversations", headers=auth) as reply:
                assert reply.status == 200
                page = await reply.json()
            if page["items"]:
                break
            await asyncio.sleep(0.1)
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
    # started as `python -m recorder`, so that is how it says to run `status`
    hint = next(line for line in stdout.decode().splitlines() if " status " in line)
    interpreter = hint.strip().split(" -m recorder status")[0]
    assert same_file(interpreter, sys.executable), hint


async def run_demo(env: dict[str, str], *args: str, within_s: float = 90) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recorder", "demo", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), within_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"the demo did not stop within {within_s} s") from None
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_a_demo_whose_port_is_taken_stops_at_once_saying_what_to_change(
    database: DatabaseTarget,
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    host, port = taken.getsockname()
    try:
        # Before: it kept running, printing healthy progress, until Ctrl-C.
        code, stdout, stderr = await run_demo(
            environment(RECORDER_DATABASE_URL=database.dsn,
                        RECORDER_API_LISTEN=f"{host}:{port}"),
            "--every", "1", within_s=60,
        )
    finally:
        taken.close()
    assert code == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("recorder:")]
    assert errors == [stderr.splitlines()[-1]], stderr
    assert errors[0].startswith(f"recorder: RECORDER_API_LISTEN: cannot listen on {host}:{port}")
    assert "in use" in errors[0] and "--state-dir" in errors[0]
    assert "Traceback" not in stderr and " ERROR " not in stderr
    assert "recorded " not in stdout, "no progress lines from a demo that cannot serve"


async def test_demo_runs_on_one_database_record_fresh_conversations_each(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    env = environment(RECORDER_DATABASE_URL=database.dsn)
    runs: list[set[str]] = []
    counts_after_first: dict[str, int] = {}
    for run in range(2):
        code, _stdout, stderr = await run_demo(env, "--duration", "4", "--rate", "50")
        assert code == 0, stderr[-2000:]
        # Before: a second run repeated seed 1's ids, merged into the first run's
        # conversations and logged "ums.dialog.refused … unknown dialog".
        assert " ERROR " not in stderr and "Traceback" not in stderr, stderr[-2000:]
        seen = {r["conversation_id"] for r in await db.fetch(
            "SELECT DISTINCT conversation_id FROM events WHERE conversation_id IS NOT NULL")}
        runs.append(seen - set().union(*runs) if runs else seen)
        if run == 0:
            counts_after_first = dict(await db.fetch(
                "SELECT conversation_id, count(*) FROM events GROUP BY conversation_id"))
    first, second = runs
    assert first and second, "each run recorded conversations of its own"
    counts_after_second = dict(await db.fetch(
        "SELECT conversation_id, count(*) FROM events GROUP BY conversation_id"))
    for conversation, count in counts_after_first.items():
        assert counts_after_second[conversation] == count, "the second run left the first alone"
    assert await db.fetchval("SELECT count(*) FROM quarantine") == 0
    await assert_log_contiguous(db)


@pytest.mark.parametrize("problem", ["in-use", "not-this-host", "unresolvable"])
async def test_an_api_address_that_cannot_be_listened_on_exits_2_in_one_line(
    tmp_path: Path, database: DatabaseTarget, problem: str
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    listen = {
        "in-use": f"127.0.0.1:{taken.getsockname()[1]}",
        "not-this-host": "192.0.2.1:8780",  # TEST-NET-1: never an address of this host
        "unresolvable": "no-such-host.invalid:8780",
    }[problem]
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "recorder", "run",
            env=environment(
                RECORDER_DATABASE_URL=database.dsn, RECORDER_ACCOUNT=ACCOUNT,
                RECORDER_UMS_URL="ws://127.0.0.1:1", RECORDER_CONSUMER_JWT="not-used",
                RECORDER_STATE_DIR=str(tmp_path / "state"), RECORDER_API_LISTEN=listen,
                RECORDER_API_TOKEN=API_TOKEN,
            ),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, raw = await asyncio.wait_for(process.communicate(), 60)
    finally:
        taken.close()
    stderr = raw.decode()
    # Before: exit 1 with tracebacks, which systemd retries forever.
    assert process.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("recorder:")]
    assert len(errors) == 1, stderr
    assert errors[0].startswith(f"recorder: RECORDER_API_LISTEN: cannot listen on {listen}: ")
    assert {"in-use": "in use", "not-this-host": "not one of this host's",
            "unresolvable": "does not resolve"}[problem] in errors[0]
    assert API_TOKEN not in stderr
