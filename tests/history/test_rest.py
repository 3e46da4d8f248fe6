"""recorder.history.rest.RestClient against a small real HTTP server: LivePerson's retry rules
(429 → a second at least; 5xx → the configured delays, then given up), pacing, and no token in
errors or logs."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from recorder.history import rest
from recorder.history.rest import RestClient, RestError
from tests.helpers import free_port

SECRET = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJlLXNlY3JldA"
AUTH = {"Authorization": f"jwt {SECRET}"}
ENDPOINT = "history_content"


@dataclasses.dataclass
class Seen:
    at: float  # time.monotonic() when the server got it
    status: int
    method: str
    authorization: str | None
    body: bytes
    content_type: str | None


class Scripted:
    """Answers each request with the next status of a script (200 once it runs out)."""

    def __init__(self, *statuses: int, body: Any = None, raw: bytes | None = None) -> None:
        self.statuses = list(statuses)
        self.body = body if body is not None else {"ok": True}
        self.raw = raw
        self.seen: list[Seen] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        status = self.statuses.pop(0) if self.statuses else 200
        self.seen.append(Seen(time.monotonic(), status, request.method,
                              request.headers.get("Authorization"), await request.read(),
                              request.headers.get("Content-Type")))
        if self.raw is not None:
            return web.Response(body=self.raw, status=status)
        return web.json_response(self.body if status == 200 else {"code": status},
                                 status=status)


Serve = Callable[[Scripted], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[TestServer] = []

    async def start(script: Scripted) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", script.handle)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/api/thing"))

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def client(http: aiohttp.ClientSession, observed: list[tuple[str, int]] | None = None,
           **options: Any) -> RestClient:
    options.setdefault("requests_per_minute", 60_000.0)
    options.setdefault("server_error_delays_s", (0.05, 0.1))
    return RestClient(http, observe=None if observed is None else (
        lambda endpoint, status: observed.append((endpoint, status))), **options)


def gaps(seen: list[Seen]) -> list[float]:
    return [later.at - earlier.at for earlier, later in itertools.pairwise(seen)]


def assert_no_secret(caplog: pytest.LogCaptureFixture, *texts: str) -> None:
    for text in texts:
        assert SECRET not in text
    for entry in caplog.records:
        assert SECRET not in entry.getMessage()
        assert SECRET not in repr(entry.args) and SECRET not in repr(entry.__dict__)


async def test_429_is_retried_a_second_later_at_least(
    serve: Serve, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    script = Scripted(429, body={"records": [1, 2]})
    observed: list[tuple[str, int]] = []
    rest_client = client(http, observed)
    reply = await rest_client.request("GET", await serve(script), endpoint=ENDPOINT,
                                      headers=AUTH)
    assert (reply.status, reply.body) == (200, {"records": [1, 2]})
    assert [s.status for s in script.seen] == [429, 200]
    assert gaps(script.seen)[0] >= 1.0
    assert observed == [(ENDPOINT, 429), (ENDPOINT, 200)]
    assert rest_client.requests == 2
    assert all(s.authorization == f"jwt {SECRET}" for s in script.seen)  # sent, every time
    assert any("history_content answered 429" in r.getMessage() for r in caplog.records)
    assert_no_secret(caplog)


async def test_a_429_holds_every_caller_of_the_client(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    script = Scripted(429)
    url = await serve(script)
    refused = asyncio.Event()
    rest_client = RestClient(http, requests_per_minute=60_000.0, observe=lambda _, status: (
        refused.set() if status == 429 else None))
    first = asyncio.ensure_future(rest_client.request("GET", url, endpoint="profile"))
    await refused.wait()  # another caller, after the 429: it waits as well
    await rest_client.request("GET", url, endpoint="profile")
    await first
    assert [s.status for s in script.seen] == [429, 200, 200]
    assert min(s.at for s in script.seen[1:]) - script.seen[0].at >= 1.0


async def test_5xx_is_retried_after_the_configured_delays(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    script = Scripted(503, 500)
    observed: list[tuple[str, int]] = []
    reply = await client(http, observed).request("GET", await serve(script), endpoint=ENDPOINT)
    assert reply.status == 200
    assert [s.status for s in script.seen] == [503, 500, 200]
    first, second = gaps(script.seen)
    assert first >= 0.05 and second >= 0.1
    assert observed == [(ENDPOINT, 503), (ENDPOINT, 500), (ENDPOINT, 200)]


async def test_5xx_gives_up_once_the_delays_run_out(
    serve: Serve, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    script = Scripted(503, 503, 503, 503)
    observed: list[tuple[str, int]] = []
    with pytest.raises(RestError) as raised:
        await client(http, observed).request("GET", await serve(script), endpoint=ENDPOINT,
                                             headers=AUTH)
    assert len(script.seen) == 3  # the first try and one retry per delay
    assert raised.value.endpoint == ENDPOINT and raised.value.status == 503
    assert str(raised.value).startswith(f"{ENDPOINT}: ") and "503" in str(raised.value)
    assert observed == [(ENDPOINT, 503)] * 3
    assert_no_secret(caplog, str(raised.value), repr(raised.value))


async def test_429_gives_up_after_its_retries(
    serve: Serve, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rest, "RATE_LIMITED_WAIT_S", 0.05)  # a second each is too slow here
    monkeypatch.setattr(rest, "MAX_RATE_LIMITED_RETRIES", 2)
    script = Scripted(*[429] * 10)
    with pytest.raises(RestError) as raised:
        await client(http, rate_limited_wait_s=0.05).request(
            "GET", await serve(script), endpoint="profile", headers=AUTH)
    assert len(script.seen) == 3
    assert raised.value.status == 429 and "profile" in str(raised.value)
    assert SECRET not in str(raised.value)


async def test_a_server_that_is_not_there_is_retried_then_given_up(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    observed: list[tuple[str, int]] = []
    url = f"http://127.0.0.1:{free_port()}/api/thing"
    with pytest.raises(RestError) as raised:
        await client(http, observed).request("GET", url, endpoint="profile", headers=AUTH)
    assert raised.value.status is None and "no connection" in str(raised.value)
    assert observed == [("profile", 0)] * 3
    assert_no_secret(caplog, str(raised.value))


@pytest.mark.parametrize("status", [404, 401, 400])
async def test_other_statuses_are_the_callers_and_not_retried(
    serve: Serve, http: aiohttp.ClientSession, status: int
) -> None:
    script = Scripted(status)
    observed: list[tuple[str, int]] = []
    reply = await client(http, observed).request("GET", await serve(script), endpoint="profile")
    assert (reply.status, reply.body) == (status, {"code": status})
    assert len(script.seen) == 1 and observed == [("profile", status)]


@pytest.mark.parametrize("raw", [b"", b"<html>not json</html>"])
async def test_a_body_that_is_not_json_reads_as_none(
    serve: Serve, http: aiohttp.ClientSession, raw: bytes
) -> None:
    reply = await client(http).request("GET", await serve(Scripted(raw=raw)), endpoint="profile")
    assert (reply.status, reply.body) == (200, None)


async def test_a_json_body_is_sent_as_json(serve: Serve, http: aiohttp.ClientSession) -> None:
    script = Scripted()
    await client(http).request("POST", await serve(script), endpoint=ENDPOINT,
                               headers=AUTH, json_body={"dialogId": "d-1"})
    await client(http).request("GET", await serve(script), endpoint=ENDPOINT)
    posted, got = script.seen
    assert (posted.method, posted.body, posted.content_type) == (
        "POST", b'{"dialogId":"d-1"}', "application/json")
    assert (got.method, got.body, got.authorization) == ("GET", b"", None)


async def test_the_budget_per_minute_paces_requests(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    script = Scripted()
    url = await serve(script)
    rest_client = client(http, requests_per_minute=120.0)  # a burst of 12, then 2 a second
    started = time.monotonic()
    await asyncio.gather(*(rest_client.request("GET", url, endpoint="profile")
                           for _ in range(16)))
    assert time.monotonic() - started >= 1.5
    assert len(script.seen) == 16
    assert script.seen[-1].at - script.seen[0].at >= 1.5
