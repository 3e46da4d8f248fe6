"""One consumer websocket: its identity, subscriptions and the outgoing frame pipeline.

Frames are queued synchronously (so a subscribe response, its replay and the live events that
follow keep their order) and written by one task per connection. That task is where the
frame faults act: drops, closes, malformed frames, shape variants, duplicates, held UPSERTs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Coroutine
from typing import Any

import orjson
from aiohttp import web

from recorder.logs import event
from recorder.simulator.faults import apply_variants, malformed_frame
from recorder.simulator.interface import SimulatorInterface
from recorder.simulator.journal import CloseRecord, SentFrame, has_unknown_event
from recorder.simulator.model import Json
from recorder.simulator.tokens import Identity

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ExSubscription:
    subscription_id: str
    conv_states: frozenset[str]
    stages: frozenset[str]
    min_ts: int
    #: Conversations this subscription has reported, so leaving the filter yields a DELETE.
    visible: set[str] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class Outgoing:
    frame: Json
    #: The conversation of a live ExConversation change (UPSERT reordering works per key).
    conv_key: str | None = None
    upsert: bool = False
    released: bool = False


class Connection:
    def __init__(
        self, sim: SimulatorInterface, conn_id: int, ws: web.WebSocketResponse, transport: Any
    ) -> None:
        self.sim = sim
        self.id = conn_id
        self.ws = ws
        self._transport = transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        self.remote_ip: str | None = str(peer[0]) if isinstance(peer, tuple) else None
        self.identity: Identity | None = None
        self.client_properties: Json | None = None
        self.features: frozenset[str] = frozenset()
        self.ex_subscriptions: dict[str, ExSubscription] = {}
        self.dialog_subscriptions: set[str] = set()
        self.frames_sent = 0
        self.closed = False
        self._queue: asyncio.Queue[Outgoing | None] = asyncio.Queue()
        self._held: dict[str, Outgoing] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._expiry: asyncio.Task[None] | None = None
        self._writer = asyncio.create_task(self._write_loop(), name=f"sim-conn-{conn_id}-writer")

    @property
    def consumer(self) -> str | None:
        return self.identity.sub if self.identity else None

    @property
    def multi_dialog(self) -> bool:
        return "MULTI_DIALOG" in self.features

    def set_client_properties(self, properties: Json) -> None:
        features = properties.get("features", [])
        if not isinstance(features, list):
            features = [features]  # a single-element array may arrive bare (§2.4)
        self.features = frozenset(f for f in features if isinstance(f, str))
        # Echoed in notifications with the HTTP-header spelling of the type (§2.3); the server
        # knows the client's address, so it fills `ipAddress` as in LivePerson's echoes.
        echoed: Json = {"type": ".ClientProperties"}
        echoed.update((k, v) for k, v in properties.items() if k != "type")
        if "ipAddress" not in echoed and self.remote_ip and "." in self.remote_ip:
            echoed["ipAddress"] = self.remote_ip
        self.client_properties = echoed

    def authenticate(self, identity: Identity) -> None:
        self.identity = identity
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = asyncio.create_task(self._expire(identity), name=f"sim-conn-{self.id}-exp")

    async def _expire(self, identity: Identity) -> None:
        await asyncio.sleep(max(0.0, identity.exp - time.time()))
        log.info("connection %s: token expired, closing %s", self.id, identity.expiry_close_code,
                 extra=event("simulator.token.expired"))
        await self.close(identity.expiry_close_code, "token expired")

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- sending ---------------------------------------------------------------------------------

    def send(self, frame: Json, *, conv_key: str | None = None, upsert: bool = False) -> None:
        if not self.closed:
            self._queue.put_nowait(Outgoing(frame, conv_key, upsert))

    async def _write_loop(self) -> None:
        try:
            while not self.closed:
                item = await self._queue.get()
                if item is None:
                    return
                await self._route(item)
        except ConnectionError as exc:
            log.debug("connection %s: write failed: %s", self.id, exc,
                      extra=event("simulator.connection.write_failed"))
            self.closed = True

    async def _route(self, item: Outgoing) -> None:
        key = item.conv_key
        if key is None:
            await self._emit(item.frame)
            return
        held = self._held.pop(key, None)
        if item.upsert and not item.released and self.sim.faults.reorder_upserts:
            if held is None:
                self._held[key] = item
                delay = self.sim.faults.reorder_hold_s
                asyncio.get_running_loop().call_later(delay, self._release, key, item)
                return
            # The newer UPSERT first, then the older one it overtook.
            await self._emit(item.frame)
            await self._emit(held.frame, reordered=True)
            return
        if held is not None:
            await self._emit(held.frame)
        await self._emit(item.frame)

    def _release(self, key: str, item: Outgoing) -> None:
        # No newer UPSERT came in time: send the held one late rather than never.
        if self._held.get(key) is item:
            del self._held[key]
            if not self.closed:
                self._queue.put_nowait(dataclasses.replace(item, released=True))

    async def _emit(self, frame: Json, *, reordered: bool = False) -> None:
        faults = self.sim.faults
        rng = self.sim.fault_rng
        if self.closed:
            return
        if faults.drop_probability > 0 and rng.random() < faults.drop_probability:
            self.drop()
            return
        if faults.malformed_probability > 0 and rng.random() < faults.malformed_probability:
            text = malformed_frame(rng)
            await self._send(text, _parse(text), malformed=True)
            if self.closed:
                return
        names: tuple[str, ...] = ()
        if faults.shape_variants:
            frame, names = apply_variants(frame, faults, rng)
        text = orjson.dumps(frame).decode()
        unknown = has_unknown_event(frame)
        await self._send(text, frame, variants=names, unknown=unknown, reordered=reordered)
        if (
            frame.get("kind") == "notification"
            and faults.duplicate_probability > 0
            and not self.closed
            and rng.random() < faults.duplicate_probability
        ):
            await self._send(text, frame, variants=names, unknown=unknown, duplicate=True)

    async def _send(
        self,
        text: str,
        parsed: Any,
        *,
        variants: tuple[str, ...] = (),
        malformed: bool = False,
        unknown: bool = False,
        duplicate: bool = False,
        reordered: bool = False,
    ) -> None:
        if self.closed:
            return
        await self.ws.send_str(text)
        self.frames_sent += 1
        if self.sim.keep_journal:
            self.sim.journal.append(SentFrame(
                self.id, self.consumer, time.monotonic(), text, parsed,
                duplicate=duplicate, variant=bool(variants), malformed=malformed,
                unknown=unknown, reordered=reordered, variants=variants,
            ))
        faults = self.sim.faults
        if faults.drop_after_frames is not None and self.frames_sent >= faults.drop_after_frames:
            self.drop()
        elif (
            faults.close_after_frames is not None
            and self.frames_sent >= faults.close_after_frames
        ):
            await self.close(faults.close_code or 1011, faults.close_reason)

    # -- ending ----------------------------------------------------------------------------------

    async def close(self, code: int, reason: str) -> None:
        """A clean close with a close frame carrying `code`."""
        if self.closed:
            return
        self.closed = True
        self._record_close(code, reason)
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=reason.encode()[:123])

    def drop(self) -> None:
        """An abrupt end: the TCP connection is closed without a websocket close frame."""
        if self.closed:
            return
        self.closed = True
        self._record_close(None, "dropped")
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def _record_close(self, code: int | None, reason: str) -> None:
        self.sim.closes.append(CloseRecord(self.id, self.consumer, time.monotonic(), code, reason))

    async def shutdown(self) -> None:
        """Stop the writer and every helper task (the socket is already gone)."""
        self.closed = True
        self._queue.put_nowait(None)
        tasks = [self._writer, *self._tasks]
        if self._expiry is not None:
            tasks.append(self._expiry)
        current = asyncio.current_task()
        tasks = [task for task in tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _parse(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
