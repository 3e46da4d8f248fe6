"""Raw HTTP/1.1 over asyncio streams: for requests aiohttp's client will not send, and to see
exactly what a server put on the wire (a HEAD answer must carry no body)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson

HANG_GUARD_S = 15.0  # only so a broken server fails the test instead of hanging it


@dataclasses.dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def request(method: str, target: str, headers: dict[str, str] | None = None) -> bytes:
    """A well-formed request that asks the server to close the connection after answering."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def exchange(port: int, data: bytes) -> RawResponse:
    """Send `data`, read until the server closes, and split the one response it sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(HANG_GUARD_S):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split(" ")[1]), headers, body)
