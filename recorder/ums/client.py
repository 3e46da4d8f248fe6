"""The consumer client: one supervised reconnect loop per identity.

- 4401, 4407 and 1008 closes, and a 401 on the upgrade, get a fresh token before reconnecting;
  every other close is transient and reconnects with jittered exponential backoff.
- The token is renewed before `exp`: the socket is closed and reopened with the new one
  (whether InitConnection may refresh a live socket is UNCONFIRMED, protocol.md section 4.1).
- Requests are paced by a token bucket shared by the identity's sockets; `request_with_retry`
  retries 429 after at least 1 s and 5xx after 5, 10 and 15 s, then with longer backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import orjson

from recorder.logs import event
from recorder.ums import frames
from recorder.ums.connection import (
    CloseInfo,
    FrameHandler,
    RequestTimeout,
    ResponseError,
    ResponseUnreadable,
    UmsConnection,
)
from recorder.ums.frames import Response
from recorder.ums.pacing import TokenBucket
from recorder.ums.tokens import ConsumerToken, TokenError, TokenSource

log = logging.getLogger(__name__)

CONSUMER_PATH = "/ws_api/account/{account}/messaging/consumer?v=3"
DEFAULT_FEATURES = (
    "MULTI_DIALOG", "RICH_CONTENT", "QUICK_REPLIES", "FILE_SHARING", "PHOTO_SHARING",
    "AUTO_MESSAGES",
)


@dataclasses.dataclass(frozen=True)
class ClientSettings:
    request_timeout: float = 10.0
    clock_interval: float = 30.0
    clock_timeout: float = 10.0
    connect_timeout: float = 15.0
    backoff_initial: float = 1.0
    backoff_max: float = 120.0
    #: a session that stayed up this long resets the backoff
    stable_after: float = 60.0
    #: renew the token this long before `exp`
    renew_before: float = 120.0
    request_rate: float = 20.0
    request_burst: int = 20
    server_error_delays: tuple[float, ...] = (5.0, 10.0, 15.0, 30.0, 60.0, 120.0)
    rate_limit_delay: float = 1.0
    max_rate_limit_retries: int = 10
    features: tuple[str, ...] = DEFAULT_FEATURES
    #: header-less mode: send the token in InitConnection instead of the upgrade request
    use_init_connection: bool = False


class SessionHandler(Protocol):
    """What a client does as its sessions open and close: subscribe on connect
    (recorder.ums.subscriptions.Subscriber). Frames go to the FrameHandler, not here."""

    async def on_connected(self, connection: UmsConnection) -> None: ...

    async def on_disconnected(self, connection: UmsConnection, close: CloseInfo) -> None: ...


class SessionLedger(Protocol):
    async def opened(self, connection: UmsConnection, identity: str, url: str) -> None: ...

    async def closed(self, connection: UmsConnection, close: CloseInfo) -> None: ...


class UpgradeRefused(Exception):
    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"websocket upgrade refused with HTTP {status}")


async def request_with_retry(
    connection: UmsConnection,
    request_type: str,
    body: dict[str, Any] | None = None,
    *,
    settings: ClientSettings,
    **kwargs: Any,
) -> Response:
    """A request that survives throttling (429) and server errors (5xx)."""
    throttled = failed = 0
    while True:
        try:
            return await connection.request(request_type, body, **kwargs)
        except ResponseError as exc:
            if exc.code == 429 and throttled < settings.max_rate_limit_retries:
                delay = settings.rate_limit_delay * (1.5**throttled) * random.uniform(1.0, 1.5)
                throttled += 1
            elif exc.code >= 500 and failed < len(settings.server_error_delays):
                delay = settings.server_error_delays[failed]
                failed += 1
            else:
                raise
            log.info("%s answered %d; retrying in %.1fs", request_type, exc.code, delay,
                     extra=event("ums.request.retry"))
            await asyncio.sleep(delay)


class ConsumerClient:
    def __init__(
        self,
        *,
        account: str,
        tokens: TokenSource,
        ums_url: Callable[[], Awaitable[str]],
        session: aiohttp.ClientSession,
        handler: FrameHandler,
        sessions: SessionHandler,
        ledger: SessionLedger | None = None,
        settings: ClientSettings | None = None,
    ) -> None:
        self.account = account
        self.tokens = tokens
        self.settings = settings or ClientSettings()
        self._ums_url = ums_url
        self._session = session
        #: every frame of every session (the recording sink)
        self._handler = handler
        #: told when a session opens and closes (the subscriber)
        self._sessions = sessions
        self._ledger = ledger
        self._pacer = TokenBucket(self.settings.request_rate, self.settings.request_burst)
        self.connection: UmsConnection | None = None
        self.connections = 0
        self.closes: list[CloseInfo] = []
        self.token_refreshes = 0
        #: requests answered 429 on this identity's sessions (all of them, retried or not)
        self.rate_limited = 0

    @property
    def name(self) -> str:
        return self.tokens.name

    @property
    def connected(self) -> bool:
        """An open websocket session right now."""
        return self.connection is not None and not self.connection.closed

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, reconnect, until `stop` is set."""
        failures = 0
        fresh_token = False
        while not stop.is_set():
            started = time.monotonic()
            delay: float
            try:
                token = await self._token(fresh_token)
                fresh_token = False
                close = await self._session_once(token, stop)
                self.closes.append(close)
                if close.needs_fresh_token:
                    log.info("identity %s: closed with %s; renewing token", self.name, close.code,
                             extra=event("ums.token.rejected"))
                    fresh_token = True
            except UpgradeRefused as exc:
                log.warning("identity %s: %s", self.name, exc, extra=event("ums.connect.refused"))
                fresh_token = exc.status == 401
            except TokenError as exc:
                log.error("identity %s: %s", self.name, exc, extra=event("ums.token.invalid"))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("identity %s: cannot connect: %s", self.name, type(exc).__name__,
                            extra=event("ums.connect.failed"))
            if stop.is_set():
                break
            if time.monotonic() - started >= self.settings.stable_after:
                failures = 0
            delay = 0.2 if fresh_token and failures == 0 else self._backoff(failures)
            failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    def _count_rate_limited(self) -> None:
        self.rate_limited += 1

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.settings.backoff_max, self.settings.backoff_initial * 2**failures)
        return random.uniform(ceiling / 2, ceiling)  # jitter: identities don't reconnect in step

    async def _token(self, fresh: bool) -> ConsumerToken:
        token = await self.tokens.current()
        left = token.seconds_left()
        if fresh or (left is not None and left <= self.settings.renew_before):
            token = await self.tokens.refresh()
            self.token_refreshes += 1
        return token

    async def _session_once(self, token: ConsumerToken, stop: asyncio.Event) -> CloseInfo:
        url = (await self._ums_url()).rstrip("/") + CONSUMER_PATH.format(account=self.account)
        properties = frames.client_properties(self.settings.features)
        headers = {"Client-Properties": orjson.dumps(properties).decode()}
        if not self.settings.use_init_connection:
            headers["Authorization"] = f"jwt {token.value}"
        try:
            ws = await self._session.ws_connect(
                url,
                headers=headers,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                autoping=True,
                max_msg_size=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            # Raised anew so the request headers (the token) are not carried along.
            raise UpgradeRefused(exc.status) from None
        connection = UmsConnection(
            ws,
            self._handler,
            consumer_id=token.sub,
            pacer=self._pacer,
            request_timeout=self.settings.request_timeout,
            clock_interval=self.settings.clock_interval,
            clock_timeout=self.settings.clock_timeout,
            on_rate_limited=self._count_rate_limited,
        )
        self.connection = connection
        self.connections += 1
        log.info("identity %s: session %s open", self.name, connection.session_id,
                 extra=event("ums.session.opened"))
        if self._ledger is not None:
            await self._ledger.opened(connection, self.name, url)
        reader = asyncio.create_task(connection.run(), name=f"ums-reader-{self.name}")
        helpers = [
            asyncio.create_task(self._start(connection, token), name="ums-subscribe"),
            asyncio.create_task(self._close_on(stop, connection), name="ums-stop"),
            asyncio.create_task(self._renew_before_expiry(token, connection), name="ums-renew"),
        ]
        try:
            close = await reader
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            if not reader.done():
                reader.cancel()
        log.info(
            "identity %s: session %s closed (code %s %s)",
            self.name, connection.session_id, close.code, close.reason or close.error or "",
            extra=event("ums.session.closed"),
        )
        await self._sessions.on_disconnected(connection, close)
        if self._ledger is not None:
            await self._ledger.closed(connection, close)
        return close

    async def _start(self, connection: UmsConnection, token: ConsumerToken) -> None:
        try:
            if self.settings.use_init_connection:
                await connection.request(
                    frames.INIT_CONNECTION,
                    headers=frames.init_connection_headers(token.value, self.settings.features),
                    paced=False,
                )
            await self._sessions.on_connected(connection)
        except (ResponseError, RequestTimeout, ResponseUnreadable) as exc:
            log.warning("identity %s: setting up the session failed: %s", self.name, exc,
                        extra=event("ums.session.setup_failed"))
            await connection.close(1011, "subscription failed")
        except Exception:
            log.exception("identity %s: session setup crashed", self.name,
                          extra=event("ums.session.setup_crashed"))
            await connection.close(1011, "subscription failed")

    async def _close_on(self, stop: asyncio.Event, connection: UmsConnection) -> None:
        await stop.wait()
        await connection.close(1000, "recorder stopping")

    async def _renew_before_expiry(self, token: ConsumerToken, connection: UmsConnection) -> None:
        left = token.seconds_left()
        if left is None or left <= self.settings.renew_before:
            return  # nothing fresher to be had now; the server's 4401 will tell us when
        await asyncio.sleep(left - self.settings.renew_before)
        log.info("identity %s: token expires soon; reconnecting with a fresh one", self.name,
                 extra=event("ums.token.expiring"))
        await connection.close(1000, "token renewal")
