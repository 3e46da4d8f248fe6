"""Faults of the websocket: random drops under load, 4401 with a replaced token file, and a
429 storm while resubscribing after a reconnect."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import asyncpg
import pytest

from recorder.db.target import DatabaseTarget
from recorder.simulator import Faults, Simulator
from recorder.ums.client import ConsumerClient
from tests.faults import oracle
from tests.faults.harness import (
    ACCOUNT,
    head_reaches,
    next_connection_id,
    play,
    poll,
    revocable_tokens,
    running_daemon,
    settings_for,
    static_identities,
    token_file_identities,
    write_token,
)

pytestmark = pytest.mark.slow


async def test_random_socket_drops_under_heavy_traffic(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    async with Simulator(account=ACCOUNT, seed=101) as sim:
        consumers = [sim.new_consumer() for _ in range(6)]
        settings = settings_for(sim, static_identities(sim, consumers))
        async with running_daemon(settings, database) as daemon:
            await play(
                sim, consumers, Faults(drop_probability=0.01),
                conversations=3, rate=1500, total_events=4000,
            )
            await oracle.wait_until_recorded(sim, consumers, db)
            assert daemon.running
            code = await daemon.stop()

        drops = [close for close in sim.closes if close.code is None]
        assert len(drops) >= 10, f"only {len(drops)} sockets were dropped"
        assert daemon.connections() >= len(consumers) + len(drops)
        assert code == 0
        await oracle.assert_oracle(sim, consumers, database, db)


async def test_close_4401_mid_stream_rereads_the_replaced_token_file(
    database: DatabaseTarget, db: asyncpg.Connection, tmp_path: Path
) -> None:
    async with Simulator(account=ACCOUNT, seed=102) as sim:
        consumers = [sim.new_consumer() for _ in range(3)]
        identities = token_file_identities(sim, consumers, tmp_path)
        revoked = revocable_tokens(sim)
        settings = settings_for(sim, identities)
        async with running_daemon(settings, database) as daemon:
            traffic = sim.start_traffic(consumers, 2, rate=600, total_events=1500)
            await poll(head_reaches(db, 300), "traffic never reached the log")
            # The credential sidecar renews the files; the platform then revokes the old
            # tokens and closes every socket with 4401 while events keep coming.
            for identity, sub in zip(identities, consumers, strict=True):
                assert identity.jwt_file is not None
                revoked.add(sim.token_for(sub))
                # Another lifetime than the first token: issued in the same second, the same
                # lifetime would yield the very same JWT.
                write_token(identity.jwt_file, sim.issue_token(sub, ttl_s=7200))
            await sim.close_connections(4401, "token revoked")
            await asyncio.wait_for(traffic, 30)
            await oracle.wait_until_recorded(sim, consumers, db)
            code = await daemon.stop()

        for client, sub in zip(daemon.app.clients, consumers, strict=True):
            assert any(close.code == 4401 for close in client.closes)
            token = await client.tokens.current()
            assert token.value == sim.token_for(sub), "the token file was not read again"
        assert code == 0
        await oracle.assert_oracle(sim, consumers, database, db)


async def test_429_on_every_third_request_after_a_reconnect(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    async with Simulator(account=ACCOUNT, seed=103) as sim:
        consumers = [sim.new_consumer() for _ in range(6)]
        settings = settings_for(sim, static_identities(sim, consumers))
        async with running_daemon(settings, database) as daemon:
            traffic = sim.start_traffic(consumers, 3, rate=600, total_events=3000)
            await poll(head_reaches(db, 1000), "traffic never reached the log")
            first_new_connection = next_connection_id(sim)
            sim.faults = Faults(reject_every=3)
            await sim.close_connections(1011, "simulated restart")
            await poll(lambda: reconnected(daemon.app.clients), "the daemon never reconnected")
            await asyncio.wait_for(traffic, 30)
            sim.faults = Faults()
            await oracle.wait_until_recorded(sim, consumers, db)
            code = await daemon.stop()

        throttled = throttled_requests(sim, first_new_connection)
        assert throttled["cqm.SubscribeExConversations"] + throttled[
            "ms.SubscribeMessagingEvents"] >= 3, f"resubscribing met too few 429s: {throttled}"
        assert code == 0
        await oracle.assert_oracle(sim, consumers, database, db)


def reconnected(clients: list[ConsumerClient]) -> bool:
    return all(client.connections >= 2 for client in clients)


def throttled_requests(sim: Simulator, from_connection: int) -> collections.Counter[str]:
    """Request types answered 429 on connections opened from `from_connection` on."""
    sent: dict[tuple[int, str], str] = {
        (frame.connection_id, str(frame.frame.get("id"))): str(frame.frame.get("type"))
        for frame in sim.received
        if isinstance(frame.frame, dict) and frame.connection_id >= from_connection
    }
    return collections.Counter(
        sent.get((answer.connection_id, str(answer.frame.get("reqId"))), "?")
        for answer in sim.journal
        if answer.kind == "resp" and answer.frame.get("code") == 429
        and answer.connection_id >= from_connection
    )
