"""A hundred and fifty identities in one daemon (past aiohttp's default of 100 connections per
client session, which once left the rest waiting forever), one of them with a token the
platform will never accept."""

from __future__ import annotations

import secrets
import time

import asyncpg
import jwt
import pytest

from recorder.config import ConsumerIdentity, Secret
from recorder.db.target import DatabaseTarget
from recorder.simulator import Faults, Simulator
from recorder.simulator.tokens import ISSUER
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


def token_signed_with_another_key(sub: str) -> str:
    """Claims the simulator accepts, signed with a key it does not know."""
    now = int(time.time())
    claims = {"sub": sub, "iss": ISSUER, "aud": f"acc:{ACCOUNT}", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, secrets.token_bytes(32), algorithm="HS256")


async def test_150_identities_one_with_a_permanently_bad_token(
    database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    async with Simulator(account=ACCOUNT, seed=108) as sim:
        consumers = [sim.new_consumer() for _ in range(149)]
        impostor = sim.new_consumer()
        sim.create_conversation(impostor)  # something to record, had the token been good
        identities = [
            *static_identities(sim, consumers),
            ConsumerIdentity(name="bad", jwt=Secret(token_signed_with_another_key(impostor))),
        ]
        settings = settings_for(sim, identities)
        async with running_daemon(settings, database) as daemon:
            bad = daemon.app.clients[-1]
            await play(sim, consumers, Faults(), conversations=2, rate=1500, total_events=5000)
            await oracle.wait_until_recorded(sim, consumers, db)
            await poll(lambda: bad.token_refreshes >= 5, "the bad identity gave up retrying")
            assert daemon.running, "the daemon exited"
            code = await daemon.stop()

        assert bad.connections == 0
        assert all(client.connections >= 1 for client in daemon.app.clients[:-1])
        assert len(daemon.app.clients) == 150
        assert code == 0
        await oracle.assert_oracle(sim, consumers, database, db)
