"""HEAD on every GET route: GET's status and headers, and no body on the wire."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.api.conftest import AUTH
from tests.api.rawhttp import exchange, request
from tests.projection_helpers import CONV

Client = TestClient[web.Request, web.Application]

URLS = [
    "/conversations?limit=3", f"/conversations/{CONV}", f"/conversations/{CONV}/messages",
    f"/conversations/{CONV}/events", "/events?after=2", "/livez", "/readyz", "/metrics",
    "/openapi.json",
    # errors: HEAD answers them as GET does too
    "/conversations/nope", "/conversations?limit=0",
]


@pytest.mark.parametrize("url", URLS)
async def test_head_is_get_without_the_body(client: Client, url: str) -> None:
    port = client.port
    assert port is not None
    get = await exchange(port, request("GET", url, AUTH))
    head = await exchange(port, request("HEAD", url, AUTH))
    assert head.status == get.status != 405
    assert head.body == b""
    assert get.body != b""
    assert int(head.headers["content-length"]) == len(get.body)
    assert {k: v for k, v in head.headers.items() if k != "date"} == {
        k: v for k, v in get.headers.items() if k != "date"}


async def test_head_on_the_event_stream_gives_the_headers_and_ends(client: Client) -> None:
    port = client.port
    assert port is not None
    # `exchange` reads until the server closes: a stream that never ended would fail it.
    head = await exchange(port, request("HEAD", "/events/stream?after=3", AUTH))
    assert head.status == 200
    assert head.headers["content-type"] == "text/event-stream"
    assert head.headers["cache-control"] == "no-cache"
    assert head.body == b""
    refused = await exchange(port, request("HEAD", "/events/stream?after=-1", AUTH))
    assert refused.status == 400 and refused.body == b""
    assert refused.headers["content-type"] == "application/problem+json"
