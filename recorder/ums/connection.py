"""One websocket session with UMS: requests matched to responses by `reqId`, notifications handed
to a handler with their raw text, and a keepalive that notices a dead server.

Reading stops while the handler is busy (the writer's queue is full): that is the backpressure
the design asks for. Meanwhile the keepalive still sends, but does not count the missing
replies against the server, since it is us who are not reading.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
import orjson

from recorder.errors import RecorderError
from recorder.logs import event
from recorder.ums import frames
from recorder.ums.frames import MalformedFrame, Notification, Response
from recorder.ums.pacing import TokenBucket

log = logging.getLogger(__name__)

#: Close codes after which only a fresh token helps (protocol.md section 8.1).
AUTH_CLOSE_CODES = frozenset({4401, 4407, 1008})
#: Our own close code when the server stops answering GetClock.
KEEPALIVE_CLOSE_CODE = 4000


def needs_fresh_token(code: int | None, reason: str) -> bool:
    if code in AUTH_CLOSE_CODES:
        return True
    # Legacy transports lose the real 4407 in some browsers and report 1005 with this text.
    return code == 1005 and "identity token is invalid" in reason.lower()


class ResponseError(RecorderError):
    """The server answered a request with an error code."""

    def __init__(self, request_type: str, response: Response) -> None:
        self.code = response.code
        self.response = response
        body = response.body if isinstance(response.body, str) else orjson.dumps(response.body)
        super().__init__(f"{request_type} failed with {response.code}: {body!s:.200}")


class RequestTimeout(RecorderError):
    """No response arrived in time."""


class ResponseUnreadable(RecorderError):
    """The response to a request arrived but could not be read."""


class ConnectionClosed(RecorderError):
    """The socket closed while a request was waiting for its response."""


@dataclasses.dataclass(frozen=True)
class CloseInfo:
    code: int | None
    reason: str
    error: str | None = None
    #: True when recorder closed the socket (stop, keepalive, renewal), False for the server.
    by_client: bool = False

    @property
    def needs_fresh_token(self) -> bool:
        return needs_fresh_token(self.code, self.reason)


class FrameHandler(Protocol):
    """Where a connection hands every frame that is not a response: the one handler between
    the socket and the log (recorder.eventlog.recording.RecordingSink). Reading waits while
    a call is running, which is the backpressure."""

    async def on_notification(
        self, connection: UmsConnection, notification: Notification, received_at: float
    ) -> None: ...

    async def on_malformed(
        self, connection: UmsConnection, error: MalformedFrame, received_at: float
    ) -> None: ...

    async def on_other(self, connection: UmsConnection, frame: Any, received_at: float) -> None:
        """A well-formed frame of a kind the protocol does not send to consumers."""


class UmsConnection:
    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        handler: FrameHandler,
        *,
        consumer_id: str,
        session_id: uuid.UUID | None = None,
        pacer: TokenBucket | None = None,
        request_timeout: float = 10.0,
        clock_interval: float = 30.0,
        clock_timeout: float = 10.0,
        on_rate_limited: Callable[[], None] | None = None,
    ) -> None:
        self.ws = ws
        self.consumer_id = consumer_id
        self.session_id = session_id or uuid.uuid4()
        #: session_id as text, as log rows and keys carry it
        self.session_key = str(self.session_id)
        self._handler = handler
        self._pacer = pacer
        self._request_timeout = request_timeout
        self._clock_interval = clock_interval
        self._clock_timeout = clock_timeout
        #: called for every 429 answer (metrics); must be quick and must not raise
        self._on_rate_limited = on_rate_limited
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Response]] = {}
        self._handling = False
        self._close_reason = ""
        self._closed_by_us: tuple[int, str] | None = None
        self.opened_at = time.time()
        self.frames = 0
        self.events = 0
        self.last_frame_at: float | None = None
        #: advances with every frame that differs from the one before it; a frame delivered
        #: twice in a row keeps the epoch, which is how unsequenced duplicates are recognised
        self.frame_epoch = 0
        self._previous_frame: str | bytes | None = None
        self.last_clock_rtt_ms: float | None = None
        self.server_time_offset_ms: float | None = None

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def request(
        self,
        request_type: str,
        body: dict[str, Any] | None = None,
        *,
        metadata: list[Any] | None = None,
        headers: list[Any] | None = None,
        within: float | None = None,
        paced: bool = True,
    ) -> Response:
        """Send a request and wait for its response; error codes raise ResponseError."""
        if paced and self._pacer is not None:
            await self._pacer.acquire()
        if self.ws.closed:
            raise ConnectionClosed(f"{request_type}: the socket is closed")
        request_id = str(next(self._ids))
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = waiter
        try:
            text = frames.build_request(
                request_type, body, request_id=request_id, metadata=metadata, headers=headers
            )
            await self.ws.send_str(text)
            try:
                response = await asyncio.wait_for(waiter, within or self._request_timeout)
            except TimeoutError:
                raise RequestTimeout(f"{request_type}: no response within the timeout") from None
        finally:
            self._pending.pop(request_id, None)
        if response.code >= 400:
            if response.code == 429:
                if self._on_rate_limited is not None:
                    self._on_rate_limited()
                if self._pacer is not None:
                    self._pacer.hold(1.0)  # protocol.md section 9: at least 1 s before the next
            raise ResponseError(request_type, response)
        return response

    async def run(self) -> CloseInfo:
        """Read until the socket closes; fail whatever is still pending."""
        keepalive = asyncio.create_task(self._keepalive(), name="ums-keepalive")
        error: str | None = None
        try:
            while True:
                message = await self.ws.receive()
                received_at = time.time()
                if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    await self._dispatch(message.data, received_at)
                elif message.type is aiohttp.WSMsgType.CLOSE:
                    self._close_reason = str(message.extra or "")
                    await self.ws.close()
                    break
                elif message.type is aiohttp.WSMsgType.ERROR:
                    error = repr(message.data)
                    break
                elif message.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    break
        finally:
            keepalive.cancel()
            await asyncio.gather(keepalive, return_exceptions=True)
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionClosed("the socket closed before the response"))
            self._pending.clear()
        if self._closed_by_us is not None:
            return CloseInfo(*self._closed_by_us, error=error, by_client=True)
        return CloseInfo(self.ws.close_code, self._close_reason, error)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed_by_us is None and not self.ws.closed:
            self._closed_by_us = (code, reason)
        await self.ws.close(code=code, message=reason.encode())

    async def _dispatch(self, data: str | bytes, received_at: float) -> None:
        self.frames += 1
        self.last_frame_at = received_at
        if data != self._previous_frame:
            self.frame_epoch += 1
            self._previous_frame = data
        try:
            frame = frames.parse_frame(data)
        except MalformedFrame as error:
            log.warning("malformed frame on session %s: %s", self.session_id, error.reason,
                        extra=event("ums.frame.malformed"))
            waiter = self._pending.get(error.req_id) if error.req_id is not None else None
            if waiter is not None and not waiter.done():
                waiter.set_exception(ResponseUnreadable(f"unreadable response: {error.reason}"))
            await self._handle(self._handler.on_malformed(self, error, received_at))
            return
        if isinstance(frame, Response):
            waiter = self._pending.get(frame.req_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(frame)
            else:
                log.info("response to unknown request %s (%s)", frame.req_id, frame.type,
                         extra=event("ums.response.unknown"))
        elif isinstance(frame, Notification):
            self.events += len(frame.changes)
            await self._handle(self._handler.on_notification(self, frame, received_at))
        else:
            log.info("frame of unexpected kind on session %s kept as other", self.session_id,
                     extra=event("ums.frame.other"))
            await self._handle(self._handler.on_other(self, frame, received_at))

    async def _handle(self, work: Any) -> None:
        self._handling = True
        try:
            await work
        finally:
            self._handling = False

    async def _keepalive(self) -> None:
        while not self.ws.closed:
            await asyncio.sleep(self._clock_interval)
            sent = time.monotonic()
            try:
                await self.ws.ping()
                response = await self.request(
                    frames.GET_CLOCK, within=self._clock_timeout, paced=False
                )
            except RequestTimeout:
                if self._handling:
                    continue  # we are the ones not reading; the server is not to blame
                log.warning("no GetClock reply within %.0fs: closing session", self._clock_timeout,
                            extra=event("ums.keepalive.timeout"))
                await self.close(KEEPALIVE_CLOSE_CODE, "keepalive timeout")
                return
            except (ConnectionClosed, ConnectionError, ResponseError, RuntimeError) as exc:
                log.debug("keepalive stopped: %r", exc, extra=event("ums.keepalive.stopped"))
                if isinstance(exc, ResponseError):
                    continue
                return
            self.last_clock_rtt_ms = (time.monotonic() - sent) * 1000
            body = response.body if isinstance(response.body, dict) else {}
            current = body.get("currentTime")
            if isinstance(current, int | float):
                self.server_time_offset_ms = time.time() * 1000 - current
