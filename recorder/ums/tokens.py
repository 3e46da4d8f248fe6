"""Consumer JWTs: where they come from, and what recorder reads from them (`sub`, `exp`).

Three sources: a static token, a file re-read whenever a fresh token is needed (systemd
`LoadCredential`, or a sidecar that renews it), and the IdP `signup` flow. A token is never
printed: reprs are masked and error messages never include it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import aiohttp
import jwt

from recorder.errors import RecorderError
from recorder.logs import event, register_secret

log = logging.getLogger(__name__)


class TokenError(RecorderError):
    """No usable consumer token could be had."""


@dataclasses.dataclass(frozen=True, slots=True)
class ConsumerToken:
    value: str = dataclasses.field(repr=False)
    sub: str
    expires_at: float | None  # Unix seconds; None when the token carries no `exp`
    unauthenticated: bool = False

    def seconds_left(self, now: float | None = None) -> float | None:
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)

    def __repr__(self) -> str:
        return f"ConsumerToken(sub={self.sub!r}, expires_at={self.expires_at!r}, value='***')"


def decode_token(value: str, *, unauthenticated: bool = False) -> ConsumerToken:
    """Read `sub` and `exp` without verifying the signature (LivePerson verifies it).

    Every token recorder obtains (configured, re-read from its file, signed up) passes here,
    so here it is registered with the log redaction, readable or not.
    """
    token = value.strip()
    register_secret(token, transient=True)
    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.PyJWTError as exc:
        # Name the problem, never the token.
        raise TokenError(f"consumer token is not a readable JWT ({type(exc).__name__})") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise TokenError("consumer token has no `sub` claim")
    exp = claims.get("exp")
    expires_at = float(exp) if isinstance(exp, int | float) else None
    return ConsumerToken(token, sub, expires_at, unauthenticated)


class TokenSource(Protocol):
    """Where one identity's tokens come from."""

    name: str

    async def current(self) -> ConsumerToken:
        """The token to use now (cached)."""

    async def refresh(self) -> ConsumerToken:
        """A fresh token, after the server refused the current one or it is about to expire."""


class StaticTokenSource:
    """A token given in the configuration. It cannot be renewed."""

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self._value = value
        self._token: ConsumerToken | None = None

    async def current(self) -> ConsumerToken:
        # Decoded on use: a bad token fails its own identity's loop, not the daemon.
        if self._token is None:
            self._token = decode_token(self._value)
        return self._token

    async def refresh(self) -> ConsumerToken:
        log.warning("identity %s: a fresh token is needed but the token is static", self.name,
                    extra=event("ums.token.static"))
        return await self.current()


class FileTokenSource:
    """A token in a file, re-read whenever a fresh one is needed."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self._path = path
        self._token: ConsumerToken | None = None

    def _read(self) -> ConsumerToken:
        try:
            text = self._path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenError(f"cannot read token file {self._path}: {exc.strerror}") from exc
        if not text.strip():
            raise TokenError(f"token file {self._path} is empty")
        return decode_token(text)

    async def current(self) -> ConsumerToken:
        if self._token is None:
            self._token = await asyncio.to_thread(self._read)
        return self._token

    async def refresh(self) -> ConsumerToken:
        token = await asyncio.to_thread(self._read)
        if self._token is not None and token.value == self._token.value:
            log.warning("identity %s: token file %s holds no newer token", self.name, self._path,
                        extra=event("ums.token.unchanged"))
        self._token = token
        return token


class SignupTokenSource:
    """LivePerson's unauthenticated `signup` flow: every refresh is a new identity (new `sub`)."""

    def __init__(
        self,
        name: str,
        account: str,
        session: aiohttp.ClientSession,
        idp_url: Callable[[], Awaitable[str]],
    ) -> None:
        self.name = name
        self._account = account
        self._session = session
        self._idp_url = idp_url
        self._token: ConsumerToken | None = None

    async def current(self) -> ConsumerToken:
        if self._token is None:
            self._token = await self._signup()
        return self._token

    async def refresh(self) -> ConsumerToken:
        self._token = await self._signup()
        return self._token

    async def _signup(self) -> ConsumerToken:
        url = f"{await self._idp_url()}/api/account/{self._account}/signup"
        try:
            async with self._session.post(url, timeout=aiohttp.ClientTimeout(total=15)) as reply:
                if reply.status != 200:
                    raise TokenError(f"signup at {url} answered HTTP {reply.status}")
                body = await reply.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TokenError(f"signup at {url} failed: {type(exc).__name__}") from exc
        # The legacy transport reads either field (protocol.md section 11).
        value = body.get("jwt") or body.get("token") if isinstance(body, dict) else None
        if not isinstance(value, str):
            raise TokenError(f"signup at {url} returned no `jwt`")
        token = decode_token(value, unauthenticated=True)
        log.info("identity %s: signed up as consumer %s", self.name, token.sub,
                 extra=event("ums.token.signed_up"))
        return token
