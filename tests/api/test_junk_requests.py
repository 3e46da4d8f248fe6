"""Junk from clients: requests aiohttp's HTTP parser refuses before any middleware runs.

The listener is built by `make_runner`, exactly as recorder.app builds it, and served on a
real TCP socket; the junk goes out through raw asyncio streams.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from recorder.api import make_runner
from recorder.api.listener import RateLimitedLog
from tests.api.conftest import AUTH, TOKEN, make_app
from tests.api.rawhttp import exchange, request

LONG_PATH = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
LONG_AUTH = (b"GET /conversations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"s" * 8192
             + b"\r\n\r\n")
# (aiohttp's pure-Python parser, AIOHTTP_NO_EXTENSIONS, lets this one through to the app)
NON_ASCII_LIMIT = (b"GET /events?limit=\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
JUNK = {
    "9000-character path": LONG_PATH,
    "8 KB Authorization header": LONG_AUTH,
    "raw non-ASCII byte in limit": NON_ASCII_LIMIT,
    "not a request line": b"GARBAGE\r\n\r\n",
    "request line with extra words": b"GET /livez HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    "bad HTTP version": b"GET /livez HTTP/9.x\r\nHost: x\r\n\r\n",
    "header name with a space": b"GET /livez HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    # line ends too, or the pure-Python parser waits for more
    "TLS ClientHello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40
                       + b"\r\n\r\n",
}
# Nothing the client sent may come back: not its path, its header, its bytes.
ECHOES = (b"aaaa", b"ssss", b"Bearer", b"\\xff", b"GARBAGE", b"extra", b"9.x", b"Bad Header")


@pytest.fixture
async def port(pool: Any, recorded: int) -> AsyncIterator[int]:
    """The API served by `make_runner` on 127.0.0.1, junk lines rate-limited to one an hour."""
    runner = make_runner(make_app(pool), junk_log_interval_s=3600)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("junk", JUNK.values(), ids=JUNK.keys())
async def test_junk_gets_a_400_problem_that_echoes_nothing(port: int, junk: bytes) -> None:
    response = await exchange(port, junk)
    assert response.status == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == 400 and body["title"] == "Bad Request"
    assert set(body) >= {"type", "title", "status", "detail"}
    assert int(response.headers["content-length"]) == len(response.body)
    for echo in ECHOES:
        assert echo not in response.body


async def test_junk_is_logged_once_at_info_without_traceback(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(3):
        for junk in JUNK.values():
            assert (await exchange(port, junk)).status == 400
    junk_lines = [r for r in caplog.records if getattr(r, "event", "") == "api.request.junk"]
    assert len(junk_lines) == 1
    assert junk_lines[0].levelno == logging.INFO and junk_lines[0].name == "recorder.api"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not any(r.exc_info for r in caplog.records)
    assert "Traceback" not in caplog.text and TOKEN not in caplog.text
    assert "ssss" not in caplog.text  # the oversized credential is not logged either
    # and the listener serves well-formed requests as before
    ok = await exchange(port, request("GET", "/conversations?limit=2", AUTH))
    assert ok.status == 200 and len(ok.json()["items"]) == 2
    missing = await exchange(port, request("GET", "/conversations/nope", AUTH))
    assert missing.status == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


def test_rate_limited_log_counts_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    now = [100.0]
    limited = RateLimitedLog(logging.getLogger("recorder.api"), 60.0, "api.request.junk",
                             clock=lambda: now[0])
    for n in range(5):
        limited.info("junk %d", n)
    now[0] += 59.0
    limited.info("junk %d", 5)
    now[0] += 1.0
    limited.info("junk %d", 6)
    assert [r.getMessage() for r in caplog.records] == [
        "junk 0", "junk 6 (5 similar lines suppressed in the last 60 s)"]
