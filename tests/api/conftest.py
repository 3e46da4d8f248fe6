"""Fixtures of the read API tests: a small recorded dataset, projected, and a client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from recorder.api import create_app
from recorder.db.target import DatabaseTarget
from tests.projection_helpers import (
    AGENT1,
    AGENT2,
    CONSUMER,
    CONV,
    OLD_CONV,
    append,
    content,
    project,
    receipt,
    record,
    upsert,
)

TOKEN = "tk-0123456789abcdef-SECRET"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
METRICS_TEXT = b"# HELP recorder_up 1\nrecorder_up 1\n"
OTHER_CONSUMER = "other-consumer"
FILLERS = [f"conv-{n:02d}" for n in range(12)]
T0 = 1_700_000_000_000

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


def dataset() -> list[Any]:
    """(change, consumer_id) pairs of a small but realistic recording."""
    old = upsert(
        OLD_CONV, T0 + 500, state="CLOSE", stage="CLOSE", dialog_state="CLOSE", agents=[AGENT1],
        endTs=T0 + 3_000, closeReason="CONSUMER",
        csat={"csatRate": 5, "csatResolutionConfirmation": True, "status": "FILLED"},
        ttr={"ttrType": "NORMAL", "value": 3600},
    )
    changes: list[tuple[dict[str, Any], str]] = [
        (upsert(CONV, T0 + 1_000, skill="100", agents=[AGENT1]), CONSUMER),
        (content(CONV, 0, "hi"), CONSUMER),
        (content(CONV, 1, "how can I help?", originator=AGENT1, role="ASSIGNED_AGENT"), CONSUMER),
        (receipt(CONV, 2, [0], "READ"), CONSUMER),
        (receipt(CONV, 3, [1], "ACCEPT", originator=CONSUMER, role="CONSUMER"), CONSUMER),
        (content(CONV, 4, "thanks"), CONSUMER),
        (upsert(CONV, T0 + 2_000, skill="200", agents=[AGENT2]), CONSUMER),
        (old, OTHER_CONSUMER),
        (content(OLD_CONV, 0, "old"), OTHER_CONSUMER),
    ]
    for n, conversation in enumerate(FILLERS):
        changes.append((upsert(conversation, T0 + n, skill="300" if n % 2 else "400"), CONSUMER))
    return changes


async def record_dataset(target: DatabaseTarget) -> int:
    head = await append(target, (record(c, consumer_id=who) for c, who in dataset()))
    await project(target)
    return head


@pytest.fixture
async def pool(database: DatabaseTarget) -> AsyncIterator[Any]:
    pool = await asyncpg.create_pool(database.dsn, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def recorded(database: DatabaseTarget) -> int:
    """The dataset, recorded and projected; returns the log head."""
    return await record_dataset(database)


def make_app(pool: Any, token: str | None = TOKEN, **options: Any) -> web.Application:
    options.setdefault("stream_poll_s", 0.05)
    return create_app(
        pool, token=token,
        metrics_render=lambda: (METRICS_TEXT, "text/plain; version=0.0.4; charset=utf-8"),
        **options,
    )


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, pool: Any, recorded: int
) -> TestClient[web.Request, web.Application]:
    """An authenticated client of the API over the recorded dataset."""
    return await aiohttp_client(make_app(pool), headers=AUTH)


@pytest.fixture
async def anonymous(
    aiohttp_client: ClientFactory, pool: Any, recorded: int
) -> TestClient[web.Request, web.Application]:
    """A client without credentials, of the same token-protected API."""
    return await aiohttp_client(make_app(pool))
