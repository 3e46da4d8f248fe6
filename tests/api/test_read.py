"""Every route of the read API returns the contract's fields with the recorded values."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from recorder.db import migrate
from tests.api.conftest import FILLERS, METRICS_TEXT, OTHER_CONSUMER, T0
from tests.projection_helpers import ACCOUNT, AGENT1, AGENT2, CONSUMER, CONV, OLD_CONV

Client = TestClient[web.Request, web.Application]


async def get_json(client: Client, url: str, status: int = 200) -> Any:
    response = await client.get(url)
    assert response.status == status, await response.text()
    return await response.json()


async def walk(client: Client, url: str, limit: int) -> list[dict[str, Any]]:
    """Every item of a keyset-paginated list, page by page."""
    items: list[dict[str, Any]] = []
    cursor = None
    separator = "&" if "?" in url else "?"
    for _ in range(1000):
        page = await get_json(client, f"{url}{separator}limit={limit}"
                              + (f"&after={cursor}" if cursor else ""))
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


async def test_conversation_record(client: Client) -> None:
    body = await get_json(client, f"/conversations/{CONV}")
    assert body["conversation_id"] == CONV
    assert body["consumer_id"] == CONSUMER
    assert body["account_id"] == ACCOUNT
    assert (body["state"], body["stage"], body["skill_id"], body["brand_id"]) == (
        "OPEN", "OPEN", "200", ACCOUNT)
    assert body["start_ts"] == "2023-11-14T22:13:20Z"
    assert body["end_ts"] is None and body["close_reason"] is None
    assert body["csat"] == {"rate": None, "resolution_confirmation": None, "status": None}
    assert body["ttr"] == {"type": None, "value": None}
    assert body["effective_ttr"] is None
    assert body["deleted"] is False
    assert body["participants"] == [
        # No profile fetched for the agent here: nickname and picture unknown.
        {"id": AGENT2, "role": "ASSIGNED_AGENT", "state": "ACTIVE", "nickname": None,
         "picture_url": None},
        {"id": CONSUMER, "role": "CONSUMER", "state": "ACTIVE", "nickname": None,
         "picture_url": None},
    ]
    [dialog] = body["dialogs"]
    assert dialog["dialog_id"] == CONV and dialog["dialog_type"] == "MAIN"
    assert dialog["state"] == "OPEN" and dialog["creation_ts"] == "2023-11-14T22:13:20Z"
    assert {"id": AGENT2, "role": "ASSIGNED_AGENT", "state": "ACTIVE"} in dialog["participants"]
    assert {"kind": "skill", "from": "100", "to": "200", "ts": T0 + 2_000} in body["transfers"]
    assert {"kind": "agent", "from": [AGENT1], "to": [AGENT2], "ts": T0 + 2_000} in body[
        "transfers"]
    assert body["first_position"] == 1 and body["last_position"] == 7


async def test_closed_conversation_has_csat_and_ttr(client: Client) -> None:
    body = await get_json(client, f"/conversations/{OLD_CONV}")
    assert (body["state"], body["stage"], body["close_reason"]) == ("CLOSE", "CLOSE", "CONSUMER")
    assert body["end_ts"] == "2023-11-14T22:13:23Z"
    assert body["csat"] == {"rate": 5, "resolution_confirmation": True, "status": "FILLED"}
    assert body["ttr"] == {"type": "NORMAL", "value": 3600}
    assert body["consumer_id"] == OTHER_CONSUMER
    assert body["dialogs"][0]["state"] == "CLOSE"
    assert body["transfers"] == []


async def test_unknown_conversation_is_a_404_problem(client: Client) -> None:
    for path in ("", "/messages", "/events"):
        response = await client.get(f"/conversations/nope{path}")
        assert response.status == 404
        assert response.content_type == "application/problem+json"
        body = await response.json()
        assert body["status"] == 404 and body["title"] == "Not Found"


async def test_messages_with_receipts(client: Client) -> None:
    page = await get_json(client, f"/conversations/{CONV}/messages")
    assert page["next"] is None
    assert [(m["sequence"], m["text"]) for m in page["items"]] == [
        (0, "hi"), (1, "how can I help?"), (4, "thanks")]
    first, second, _ = page["items"]
    assert first["dialog_id"] == CONV
    assert first["originator_id"] == CONSUMER and first["originator_role"] == "CONSUMER"
    assert first["content_type"] == "text/plain"
    assert first["rich_content"] is None and first["file"] is None
    assert first["server_ts"] == "2023-11-14T22:13:20Z"
    assert first["receipts"] == [
        {"participant_id": AGENT1, "status": "READ", "server_ts": "2023-11-14T22:13:20.002000Z"}]
    assert second["originator_role"] == "ASSIGNED_AGENT"
    assert second["receipts"] == [{"participant_id": CONSUMER, "status": "ACCEPT",
                                   "server_ts": "2023-11-14T22:13:20.003000Z"}]


async def test_messages_pages_by_dialog_and_sequence(client: Client) -> None:
    items = await walk(client, f"/conversations/{CONV}/messages", limit=1)
    assert [(m["dialog_id"], m["sequence"]) for m in items] == [(CONV, 0), (CONV, 1), (CONV, 4)]


async def test_list_pages_every_conversation_once_in_order(client: Client) -> None:
    everything = await walk(client, "/conversations", limit=1000)
    assert len(everything) == 2 + len(FILLERS)
    for limit in (1, 5, 13):
        items = await walk(client, "/conversations", limit=limit)
        assert [c["conversation_id"] for c in items] == [
            c["conversation_id"] for c in everything]
    keys = [(c["updated_at"], c["conversation_id"]) for c in everything]
    assert keys == sorted(keys)
    assert "participants" not in everything[0]


async def test_list_filters(client: Client) -> None:
    async def ids(query: str) -> set[str]:
        return {c["conversation_id"] for c in await walk(client, f"/conversations?{query}", 4)}

    assert await ids("state=CLOSE") == {OLD_CONV}
    assert await ids("stage=OPEN") == {CONV, *FILLERS}
    assert await ids(f"consumer_id={OTHER_CONSUMER}") == {OLD_CONV}
    assert await ids("skill_id=300") == {f for n, f in enumerate(FILLERS) if n % 2}
    assert await ids("skill_id=200&state=OPEN") == {CONV}
    assert await ids("closed_between=2023-11-14T22:13:23Z,2023-11-14T22:13:24Z") == {OLD_CONV}
    assert await ids("closed_between=2023-11-14T22:13:24Z,2023-11-15T00:00:00Z") == set()
    assert await ids("updated_since=2000-01-01T00:00:00%2B00:00") == {CONV, OLD_CONV, *FILLERS}
    assert await ids("updated_since=2999-01-01T00:00:00") == set()
    assert await ids("state=NOPE") == set()


async def test_conversation_events(client: Client) -> None:
    page = await get_json(client, f"/conversations/{OLD_CONV}/events")
    assert [e["position"] for e in page["items"]] == [8, 9]
    assert page["next"] == 9
    event = page["items"][0]
    assert event["kind"] == "conversation" and event["change_type"] == "UPSERT"
    assert event["type"] == "cqm.ExConversationChangeNotification"
    assert event["conversation_id"] == OLD_CONV and event["consumer_id"] == OTHER_CONSUMER
    assert event["payload"]["result"]["convId"] == OLD_CONV
    message = page["items"][1]
    assert (message["kind"], message["dialog_id"], message["sequence"]) == (
        "messaging", OLD_CONV, 0)
    assert message["server_ts"] == "2023-11-14T22:13:20Z"
    assert message["originator_id"] == CONSUMER
    empty = await get_json(client, f"/conversations/{OLD_CONV}/events?after=9")
    assert empty == {"items": [], "next": None}


async def test_events_feed(client: Client, recorded: int) -> None:
    page = await get_json(client, "/events?limit=4")
    assert [e["position"] for e in page["items"]] == [1, 2, 3, 4]
    assert page["next"] == 4
    first = page["items"][0]
    assert set(first) == {
        "position", "received_at", "recorded_at", "account_id", "consumer_id", "session_id",
        "kind", "type", "change_type", "conversation_id", "dialog_id", "sequence",
        "originator_id", "server_ts", "payload"}
    assert first["account_id"] == ACCOUNT and first["conversation_id"] == CONV
    assert first["received_at"].endswith("Z") and first["recorded_at"].endswith("Z")
    rest = await get_json(client, "/events?after=4&limit=1000")
    assert [e["position"] for e in rest["items"]] == list(range(5, recorded + 1))
    assert await get_json(client, f"/events?after={recorded}") == {"items": [], "next": None}


async def test_operational_routes(client: Client) -> None:
    assert await get_json(client, "/livez") == {"status": "ok"}
    ready = await get_json(client, "/readyz")
    assert ready == {"status": "ready", "schema_revision": migrate.head_revision()}
    response = await client.get("/metrics")
    assert response.status == 200 and await response.read() == METRICS_TEXT
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    spec = await get_json(client, "/openapi.json")
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) >= {
        "/conversations", "/conversations/{id}", "/conversations/{id}/messages",
        "/conversations/{id}/events", "/events", "/events/stream", "/livez", "/readyz",
        "/metrics", "/openapi.json"}
    names = {p["name"] for p in spec["paths"]["/conversations"]["get"]["parameters"]}
    assert names == {"state", "stage", "consumer_id", "skill_id", "updated_since",
                     "closed_between", "after", "limit"}
