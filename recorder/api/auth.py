"""Bearer authentication of the read API, and the rule on where it may listen without a token.

* Every route except `/livez` needs `Authorization: Bearer <token>` when a token is configured.
  Tokens are compared as SHA-256 digests with `hmac.compare_digest`: constant time, and the
  length of the configured token does not leak either.
* A credential in the query string (`?token=`, `?access_token=`, any case) is refused with
  400 on every route, with or without a configured token: URLs end up in logs and histories.
  The value is never echoed.
* Without a token the API may only listen on a loopback address (`check_listen_allowed`).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from recorder.api.problems import Problem, bad_request
from recorder.errors import ConfigError

OPEN_PATHS = frozenset({"/livez"})
QUERY_CREDENTIALS = frozenset({"token", "access_token", "api_key", "apikey", "bearer"})
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="recorder"'}


def is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def check_listen_allowed(host: str, token: str | None) -> None:
    """Refuse to serve on a non-loopback address (including 0.0.0.0 and ::) without a token."""
    if token:
        return
    if not is_loopback(host):
        raise ConfigError(
            "RECORDER_API_TOKEN",
            f"the read API listens on {host!r}, which is not a loopback address; "
            "set RECORDER_API_TOKEN or RECORDER_API_TOKEN_FILE, or listen on 127.0.0.1",
        )


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


#: The name of the token the request being handled presented (None without authentication).
#: A context variable: each request's handler runs in its own task (and request storage keys
#: need aiohttp 3.14).
CREDENTIAL: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "recorder_credential", default=None)


def match_token(presented: str, expected: Mapping[str, bytes]) -> str | None:
    """The name of the token `presented` is, or None. Every token is compared (constant
    time each), so how many there are and which one matched do not show in the timing."""
    digest, found = _digest(presented), None
    for name, wanted in expected.items():
        if hmac.compare_digest(digest, wanted) and found is None:
            found = name
    return found


def auth_middleware(tokens: Mapping[str, str]) -> Middleware:
    """Bearer authentication against the named tokens (none: every request is let in, which
    is allowed on loopback only). The matched token's name is in `CREDENTIAL`."""
    expected = {name: _digest(value) for name, value in tokens.items() if value}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if any(key.lower() in QUERY_CREDENTIALS for key in request.query):
            raise bad_request(
                "credentials are not accepted in the query string; "
                "send them in the Authorization header"
            )
        CREDENTIAL.set(None)
        if expected and request.path not in OPEN_PATHS:
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            presented = presented.strip()
            if scheme.lower() != "bearer" or not presented:
                raise Problem(401, "a bearer token is required", headers=CHALLENGE)
            name = match_token(presented, expected)
            if name is None:
                raise Problem(
                    401,
                    "the bearer token is not valid",
                    headers={"WWW-Authenticate": 'Bearer realm="recorder", error="invalid_token"'},
                )
            CREDENTIAL.set(name)
        return await handler(request)

    return middleware
