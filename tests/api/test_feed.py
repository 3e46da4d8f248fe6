"""The change feed: /events pages and the SSE stream under concurrent appends."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from recorder.db.target import DatabaseTarget
from recorder.eventlog.writer import EventWriter
from tests.helpers import message_event, wait_until

Client = TestClient[web.Request, web.Application]


async def append_slowly(target: DatabaseTarget, count: int) -> int:
    """Append `count` events in many small commits; returns the head."""
    writer = EventWriter(target, batch_wait_ms=0.5, batch_size=7)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    for n in range(count):
        await writer.put(message_event(f"live-{n % 5}", n // 5, text=f"m{n}"))
        if n % 3 == 0:
            await asyncio.sleep(0.001)
    stop.set()
    await task
    return writer.head


async def test_pages_see_every_position_once_while_the_writer_appends(
    client: Client, database: DatabaseTarget, recorded: int
) -> None:
    appending = asyncio.create_task(append_slowly(database, 600))
    seen: list[int] = []
    after, pages_while_appending = 0, 0
    while True:
        done = appending.done()  # read before the page: a page after the end sees everything
        response = await client.get("/events", params={"after": after, "limit": 9})
        page = await response.json()
        seen += [e["position"] for e in page["items"]]
        pages_while_appending += not done and bool(page["items"])
        if page["next"] is not None:
            assert page["next"] == page["items"][-1]["position"]
            after = page["next"]
        elif done:
            break
        else:
            await asyncio.sleep(0.002)
    head = await appending
    assert head == recorded + 600
    assert seen == list(range(1, head + 1))
    assert pages_while_appending > 10  # the pages really raced the writer


async def read_events(response: ClientResponse, count: int) -> list[tuple[int, dict[str, Any]]]:
    """The next `count` SSE events of a stream, as (id, data)."""
    found: list[tuple[int, dict[str, Any]]] = []
    event_id, data = None, None
    async with asyncio.timeout(20):
        while len(found) < count:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                data = orjson.loads(line[6:])
            elif line == "" and event_id is not None and data is not None:
                found.append((event_id, data))
                event_id, data = None, None
    return found


async def test_stream_resumes_from_last_event_id(client: Client, recorded: int) -> None:
    response = await client.get("/events/stream", headers={"Last-Event-ID": "5"},
                                params={"after": "1", "limit": "2"})
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    events = await read_events(response, recorded - 5)
    assert [i for i, _ in events] == list(range(6, recorded + 1))
    assert all(data["position"] == i for i, data in events)
    page = await (await client.get("/events", params={"after": 5, "limit": 1000})).json()
    assert [data for _, data in events] == page["items"]
    response.close()


async def test_stream_follows_new_appends(
    client: Client, database: DatabaseTarget, recorded: int
) -> None:
    response = await client.get("/events/stream", params={"after": str(recorded)})
    assert response.status == 200
    head = await append_slowly(database, 40)
    events = await read_events(response, 40)
    assert [i for i, _ in events] == list(range(recorded + 1, head + 1))
    response.close()


async def test_stream_sends_heartbeats(
    aiohttp_client: Any, pool: Any, recorded: int
) -> None:
    from tests.api.conftest import AUTH, make_app

    client = await aiohttp_client(make_app(pool, stream_heartbeat_s=0.1), headers=AUTH)
    response = await client.get("/events/stream", params={"after": str(recorded)})
    async with asyncio.timeout(10):
        while (await response.content.readline()) != b": keepalive\n":
            pass
    response.close()


async def test_stream_bad_parameters_are_problems(client: Client) -> None:
    for headers, params in (({"Last-Event-ID": "x"}, {}), ({}, {"after": "-3"})):
        response = await client.get("/events/stream", headers=headers, params=params)
        assert response.status == 400
        assert response.content_type == "application/problem+json"


async def test_stream_wakes_on_a_commit_notification_long_before_its_poll(
    aiohttp_client: Any, pool: Any, database: DatabaseTarget, recorded: int
) -> None:
    """A serve worker in its own process learns of commits by LISTEN/NOTIFY; its poll
    interval (30 s here) is only the fallback."""
    from recorder.eventlog.wakeups import CommitWakeups
    from tests.api.conftest import AUTH, make_app

    wakeups = CommitWakeups(database, listen=True)
    stop = asyncio.Event()
    listener = asyncio.create_task(wakeups.run(stop))
    try:
        await wait_until(lambda: wakeups.listening, within_s=10)
        client = await aiohttp_client(make_app(pool, stream_poll_s=30.0, commits=wakeups),
                                      headers=AUTH)
        response = await client.get("/events/stream", params={"after": str(recorded)})
        assert response.status == 200
        await asyncio.sleep(0.2)  # the stream is idle, waiting
        head = await append_slowly(database, 5)
        async with asyncio.timeout(5):  # far below the 30 s poll
            events = await read_events(response, 5)
        assert [i for i, _ in events] == list(range(recorded + 1, head + 1))
        response.close()
    finally:
        stop.set()
        await listener
