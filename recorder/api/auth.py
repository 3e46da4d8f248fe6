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

import hashlib
import hmac
import ipaddress

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


def auth_middleware(token: str | None) -> Middleware:
    expected = _digest(token) if token else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if any(key.lower() in QUERY_CREDENTIALS for key in request.query):
            raise bad_request(
                "credentials are not accepted in the query string; "
                "send them in the Authorization header"
            )
        if expected is not None and request.path not in OPEN_PATHS:
            scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
            presented = presented.strip()
            if scheme.lower() != "bearer" or not presented:
                raise Problem(401, "a bearer token is required", headers=CHALLENGE)
            if not hmac.compare_digest(_digest(presented), expected):
                raise Problem(
                    401,
                    "the bearer token is not valid",
                    headers={"WWW-Authenticate": 'Bearer realm="recorder", error="invalid_token"'},
                )
        return await handler(request)

    return middleware
