"""A plain aiohttp websocket client for the simulator's tests (deliberately not recorder's).

It keeps every frame it received, answers nothing by itself, and lets a test wait for a frame
matching a predicate. Also: key-path helpers. (The protocol fixtures: tests/protocol_files.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from recorder.simulator import Simulator

Frame = Any
FEATURES = ("RICH_CONTENT", "QUICK_REPLIES", "MULTI_DIALOG", "PHOTO_SHARING")


class PlainClient:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session = session
        self.ws = ws
        self.frames: list[Frame] = []
        self.texts: list[str] = []
        self.closed = False
        self.close_code: int | None = None
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        sim: Simulator,
        token: str | None = None,
        *,
        features: tuple[str, ...] | None = FEATURES,
        scheme: str = "jwt",
    ) -> PlainClient:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"{scheme} {token}"
        if features is not None:
            properties = {"type": ".ClientProperties", "deviceFamily": "DESKTOP", "os": "LINUX",
                          "features": list(features)}
            headers["Client-Properties"] = orjson.dumps(properties).decode()
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(sim.ws_endpoint(), headers=headers, autoclose=True)
        except BaseException:
            await session.close()
            raise
        return cls(session, ws)

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.texts.append(message.data)
                try:
                    self.frames.append(orjson.loads(message.data))
                except orjson.JSONDecodeError:
                    self.frames.append(None)
            self._changed.set()
        self.closed = True
        self.close_code = self.ws.close_code
        self._changed.set()

    async def send(self, frame: Frame) -> None:
        await self.ws.send_str(frame if isinstance(frame, str) else orjson.dumps(frame).decode())

    async def request(
        self, type_: str, body: Any = None, *, within: float = 3.0, **extra: Any
    ) -> dict[str, Any]:
        req_id = f"t-{next(self._ids)}"
        frame: dict[str, Any] = {"kind": "req", "id": req_id, "type": type_, **extra}
        if body is not None:
            frame["body"] = body
        await self.send(frame)
        return await self.response(req_id, within=within)

    async def response(self, req_id: str, *, within: float = 3.0) -> dict[str, Any]:
        found: dict[str, Any] = await self.wait_for(
            lambda f: is_resp(f) and f.get("reqId") == req_id, within=within
        )
        return found

    async def wait_for(
        self, predicate: Callable[[Frame], bool], *, within: float = 3.0, start: int = 0
    ) -> Frame:
        deadline = asyncio.get_running_loop().time() + within
        index = start
        while True:
            for frame in self.frames[index:]:
                if predicate(frame):
                    return frame
            index = len(self.frames)
            if self.closed:
                raise AssertionError(f"socket closed ({self.close_code}) before a match")
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError("no matching frame in time")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_closed(self, within: float = 3.0) -> int | None:
        await asyncio.wait_for(self._reader, within)
        return self.close_code

    async def settle(self, quiet_s: float = 0.1) -> None:
        """Wait until no frame arrived for `quiet_s`."""
        while True:
            count = len(self.frames)
            await asyncio.sleep(quiet_s)
            if len(self.frames) == count:
                return

    def notifications(self, type_: str | None = None) -> list[dict[str, Any]]:
        return [f for f in self.frames if isinstance(f, dict) and f.get("kind") == "notification"
                and (type_ is None or f.get("type") == type_)]

    def messaging_changes(self, dialog_id: str | None = None) -> list[dict[str, Any]]:
        return [c for f in self.notifications("ms.MessagingEventNotification")
                for c in f["body"]["changes"] if dialog_id in (None, c["dialogId"])]

    def ex_changes(self) -> list[dict[str, Any]]:
        return [c for f in self.notifications("cqm.ExConversationChangeNotification")
                for c in f["body"]["changes"]]

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()
        self._reader.cancel()


def is_resp(frame: Frame) -> bool:
    return isinstance(frame, dict) and frame.get("kind") == "resp"


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path of a JSON value; list items share the `[]` path segment."""
    out: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            out.add(path)
            out |= key_paths(item, path)
    elif isinstance(value, list):
        for item in value:
            out |= key_paths(item, prefix + "[]")
    return out
