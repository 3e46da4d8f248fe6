"""LivePerson's REST services the recorder reads besides the socket: paced and retried alike.

One `RestClient` per process carries every agent-profile and history request, so that a
backlog of thousands of conversations never bursts (protocol.md sections 8.3 and 9):

- a request budget per minute (a token bucket with a small burst);
- 429: wait at least a second (the whole client holds off, not only that request), retried;
- 5xx and network failures: retried after 5, 10 and 15 seconds, then given up;
- any other status is the caller's to read (404 for an unknown agent, 401 for a stale token).

Requests carry tokens in headers only; URLs and log lines never hold one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from recorder.errors import RecorderError
from recorder.logs import event
from recorder.ums.pacing import TokenBucket

log = logging.getLogger(__name__)

#: LivePerson's retry guidance: 429 → at least one second apart; 5xx → 5, 10, 15 seconds.
RATE_LIMITED_WAIT_S = 1.0
SERVER_ERROR_DELAYS_S = (5.0, 10.0, 15.0)
MAX_RATE_LIMITED_RETRIES = 5
REQUEST_TIMEOUT_S = 30.0


class RestError(RecorderError):
    """A REST request failed for good (after its retries), or answered something unusable."""

    def __init__(self, endpoint: str, message: str, status: int | None = None) -> None:
        self.endpoint = endpoint
        self.status = status
        super().__init__(f"{endpoint}: {message}")


@dataclasses.dataclass(frozen=True)
class RestReply:
    status: int
    body: Any  # parsed JSON; None when the body was empty or not JSON


#: Told of every answer (endpoint, status; 0 for a network failure): the metrics.
Observer = Callable[[str, int], None]


class RestClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        requests_per_minute: float,
        server_error_delays_s: Sequence[float] = SERVER_ERROR_DELAYS_S,
        rate_limited_wait_s: float = RATE_LIMITED_WAIT_S,
        observe: Observer | None = None,
    ) -> None:
        rate = requests_per_minute / 60.0
        self._http = http
        # A burst of a tenth of a minute's budget at most: steady, never a storm.
        self._bucket = TokenBucket(rate, max(1, int(requests_per_minute // 10)))
        self._server_error_delays = tuple(server_error_delays_s)
        self._rate_limited_wait = max(RATE_LIMITED_WAIT_S, rate_limited_wait_s)
        self._observe = observe
        self.requests = 0  # sent, retries included

    async def request(
        self, method: str, url: str, *, endpoint: str,
        headers: Mapping[str, str] | None = None, json_body: Any = None,
    ) -> RestReply:
        """Send, retrying 429 and 5xx as the guidance says; RestError when retries run out."""
        throttled = failed = 0
        while True:
            await self._bucket.acquire()
            status, body = await self._send(method, url, endpoint, headers, json_body)
            if status == 429 and throttled < MAX_RATE_LIMITED_RETRIES:
                throttled += 1
                # Everyone waits: the next request of any caller goes a second later at least.
                self._bucket.hold(self._rate_limited_wait)
                delay = self._rate_limited_wait * random.uniform(1.0, 1.25)
            elif (status == 0 or status >= 500) and failed < len(self._server_error_delays):
                delay = self._server_error_delays[failed]
                failed += 1
            elif status == 429 or status == 0 or status >= 500:
                raise RestError(endpoint, f"gave up after {throttled + failed + 1} attempts "
                                f"(last answer {status or 'no connection'})", status or None)
            else:
                return RestReply(status, body)
            log.info("%s answered %s; retrying in %.1fs", endpoint, status or "nothing", delay,
                     extra=event("rest.request.retry"))
            await asyncio.sleep(delay)

    async def _send(self, method: str, url: str, endpoint: str,
                    headers: Mapping[str, str] | None, json_body: Any) -> tuple[int, Any]:
        self.requests += 1
        data = None if json_body is None else orjson.dumps(json_body)
        send_headers = dict(headers or {})
        if data is not None:
            send_headers["Content-Type"] = "application/json"
        try:
            async with self._http.request(
                method, url, headers=send_headers, data=data,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            ) as reply:
                raw = await reply.read()
                status = reply.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The exception text may hold the URL, never a header: safe to log.
            log.info("%s failed: %s", endpoint, type(exc).__name__,
                     extra=event("rest.request.failed"))
            status, raw = 0, b""
        if self._observe is not None:
            self._observe(endpoint, status)
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        return status, body
