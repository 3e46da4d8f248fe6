"""The audit trail: every conversation read and search made through the API is recorded with
the name of the token presented, the client and what was asked; the table is append-only."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import pytest

from tests.api.conftest import CONV, OLD_CONV, make_app

ALICE, BOB = "alice-0123456789abcdef", "bob-fedcba9876543210"


async def audit_rows(db: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT credential, client, action, conversation_id, detail::text, "
                          "path FROM audit ORDER BY id")
    return [dict(r, detail=orjson.loads(r["detail"]) if r["detail"] else None) for r in rows]


async def test_each_read_is_recorded_under_the_name_of_its_token(
    aiohttp_client: Any, pool: Any, recorded: int, db: asyncpg.Connection
) -> None:
    app = make_app(pool, token=None, tokens={"alice": ALICE, "bob": BOB})
    alice = await aiohttp_client(app, headers={"Authorization": f"Bearer {ALICE}"})
    bob = await aiohttp_client(app, headers={"Authorization": f"Bearer {BOB}"})
    assert (await alice.get(f"/conversations/{CONV}")).status == 200
    assert (await bob.get(f"/conversations/{OLD_CONV}/messages?limit=5")).status == 200
    assert (await bob.get("/conversations?state=CLOSE")).status == 200
    assert (await alice.get(f"/conversations/{CONV}/events")).status == 200
    assert (await alice.get("/events")).status == 200  # the change feed is not audited
    rows = await audit_rows(db)
    assert [(r["credential"], r["action"], r["conversation_id"]) for r in rows] == [
        ("alice", "conversation.view", CONV),
        ("bob", "conversation.messages", OLD_CONV),
        ("bob", "conversations.search", None),
        ("alice", "conversation.events", CONV),
    ]
    assert rows[1]["detail"] == {"limit": "5"} and rows[2]["detail"] == {"state": "CLOSE"}
    assert all(r["client"] == "127.0.0.1" for r in rows)
    assert rows[0]["path"] == f"/conversations/{CONV}"
    # No token value in the trail, only names.
    assert ALICE not in str(rows) and BOB not in str(rows)


async def test_a_refused_request_reads_nothing_and_is_not_in_the_trail(
    aiohttp_client: Any, pool: Any, recorded: int, db: asyncpg.Connection
) -> None:
    app = make_app(pool, token=None, tokens={"alice": ALICE})
    stranger = await aiohttp_client(app, headers={"Authorization": "Bearer not-a-token"})
    assert (await stranger.get(f"/conversations/{CONV}")).status == 401
    assert await audit_rows(db) == []


async def test_without_a_token_the_credential_is_null(
    aiohttp_client: Any, pool: Any, recorded: int, db: asyncpg.Connection
) -> None:
    loopback = await aiohttp_client(make_app(pool, token=None))
    assert (await loopback.get(f"/conversations/{CONV}")).status == 200
    assert [(r["credential"], r["action"]) for r in await audit_rows(db)] == [
        (None, "conversation.view")]


async def test_the_trail_is_append_only(
    aiohttp_client: Any, pool: Any, recorded: int, db: asyncpg.Connection
) -> None:
    client = await aiohttp_client(make_app(pool, token=None, tokens={"alice": ALICE}),
                                  headers={"Authorization": f"Bearer {ALICE}"})
    assert (await client.get(f"/conversations/{CONV}")).status == 200
    for statement in ("UPDATE audit SET credential = 'mallory'", "DELETE FROM audit"):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await db.execute(statement)
    assert [r["credential"] for r in await audit_rows(db)] == ["alice"]
