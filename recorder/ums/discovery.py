"""Domain lookup (CSDS): the UMS, IdP, history and agent-profile hosts of an account, cached.

`GET {csds}/api/account/{account}/service/{name}/baseURI.json?version=1.0` answers either
`{"baseURI": …}` or `{"baseURIs": [{"service": …, "baseURI": …}]}`; both are accepted
(protocol.md section 1). Discovered hosts take the CSDS URL's security: https gives
wss/https, plain http (a local simulator) gives ws/http.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from recorder.errors import RecorderError

UMS_SERVICE = "asyncMessagingEnt"
IDP_SERVICE = "idp"
HISTORY_SERVICE = "msgHist"
AGENT_PROFILE_SERVICE = "acCdnDomain"


class DiscoveryError(RecorderError):
    """The domain lookup failed or answered something unusable."""


def base_uri_from_reply(service: str, body: Any) -> str:
    candidates: list[Any] = []
    if isinstance(body, dict):
        if "baseURI" in body:
            candidates.append(body)
        listed = body.get("baseURIs")
        if isinstance(listed, list):
            candidates.extend(listed)
        elif isinstance(listed, dict):
            candidates.append(listed)
    for entry in candidates:
        if not isinstance(entry, dict):
            continue
        if entry.get("service") not in (None, service):
            continue
        host = entry.get("baseURI")
        if isinstance(host, str) and host.strip():
            return host.strip().rstrip("/")
    raise DiscoveryError(f"domain lookup for {service} returned no baseURI")


class Discovery:
    def __init__(
        self,
        csds_url: str,
        account: str,
        session: aiohttp.ClientSession,
        *,
        cache_seconds: float = 3600.0,
    ) -> None:
        self._csds_url = csds_url.rstrip("/")
        self._account = account
        self._session = session
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, str]] = {}
        self._secure = not self._csds_url.startswith("http://")

    async def base_uri(self, service: str) -> str:
        cached = self._cache.get(service)
        if cached is not None and time.monotonic() - cached[0] < self._cache_seconds:
            return cached[1]
        url = (
            f"{self._csds_url}/api/account/{self._account}/service/{service}"
            "/baseURI.json?version=1.0"
        )
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=15)) as reply:
                if reply.status != 200:
                    raise DiscoveryError(f"domain lookup {url} answered HTTP {reply.status}")
                body = await reply.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if cached is not None:
                return cached[1]  # a stale host beats none while the lookup is down
            raise DiscoveryError(f"domain lookup {url} failed: {exc!r}") from exc
        host = base_uri_from_reply(service, body)
        self._cache[service] = (time.monotonic(), host)
        return host

    async def ums_url(self) -> str:
        host = await self.base_uri(UMS_SERVICE)
        return f"{'wss' if self._secure else 'ws'}://{host}"

    async def idp_url(self) -> str:
        return await self.https_url(IDP_SERVICE)

    async def history_url(self) -> str:
        return await self.https_url(HISTORY_SERVICE)

    async def agent_profile_url(self) -> str:
        return await self.https_url(AGENT_PROFILE_SERVICE)

    async def https_url(self, service: str) -> str:
        host = await self.base_uri(service)
        return f"{'https' if self._secure else 'http'}://{host}"
