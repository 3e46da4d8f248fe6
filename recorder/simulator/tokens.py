"""Consumer JWTs: HS256 signed with a random secret that lives only as long as the simulator.

Claims follow what a LivePerson consumer JWT carries and what a client reads from it: `sub`
(the consumer participant id), `exp`, `iat`, `iss`, `aud` (`acc:{account}`), plus `lp_unauth`
marking identities created by the IdP signup (their expiry closes the socket with 4407).
"""

from __future__ import annotations

import dataclasses
import math
import random
import secrets
import time

import jwt

from recorder.simulator.model import SimulatorError, new_uuid

ISSUER = "recorder-simulator"
UNAUTH_CLAIM = "lp_unauth"
ALGORITHM = "HS256"


@dataclasses.dataclass(frozen=True)
class Identity:
    """A verified token: who it is, when it expires, and whether it came from signup."""

    sub: str
    exp: float
    unauthenticated: bool

    @property
    def expiry_close_code(self) -> int:
        # protocol.md §8.1: 4407 = unauthenticated identity expired, 4401 = fresh token needed.
        return 4407 if self.unauthenticated else 4401


class TokenError(SimulatorError):
    """A token was missing, malformed, wrongly signed or expired."""

    def __init__(
        self, reason: str, *, expired: bool = False, unauthenticated: bool = False
    ) -> None:
        self.expired = expired
        self.unauthenticated = unauthenticated
        super().__init__(reason)

    @property
    def close_code(self) -> int:
        return 4407 if self.expired and self.unauthenticated else 4401


class TokenIssuer:
    def __init__(self, account: str, rng: random.Random) -> None:
        self.account = account
        self._rng = rng
        # Random per simulator on purpose: tokens of one run must not verify in another.
        self._secret = secrets.token_bytes(32)
        self._latest: dict[str, str] = {}

    @property
    def audience(self) -> str:
        return f"acc:{self.account}"

    def new_sub(self) -> str:
        """A fresh consumer id from the seeded generator, so identities are reproducible."""
        return new_uuid(self._rng)

    def issue(
        self, sub: str | None = None, ttl_s: float = 3600.0, unauthenticated: bool = False
    ) -> str:
        sub = sub or self.new_sub()
        now = time.time()
        claims = {
            "sub": sub,
            "iss": ISSUER,
            "aud": self.audience,
            "iat": int(now),
            # Whole seconds as JWTs usually carry; rounded up so the token lives >= ttl_s.
            "exp": math.ceil(now + ttl_s),
            UNAUTH_CLAIM: unauthenticated,
        }
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        self._latest[sub] = token
        return token

    def latest(self, sub: str) -> str | None:
        return self._latest.get(sub)

    def verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=ISSUER,
                options={"require": ["sub", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError as exc:
            # Well signed but expired: its kind decides between 4401 and 4407.
            claims = jwt.decode(
                token, self._secret, algorithms=[ALGORITHM], audience=self.audience,
                options={"verify_exp": False},
            )
            unauth = bool(claims.get(UNAUTH_CLAIM, False))
            raise TokenError("token is expired", expired=True, unauthenticated=unauth) from exc
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"token is invalid: {exc}") from exc
        return Identity(
            sub=str(claims["sub"]),
            exp=float(claims["exp"]),
            unauthenticated=bool(claims.get(UNAUTH_CLAIM, False)),
        )


def parse_authorization(header: str, schemes: tuple[str, ...] = ("jwt",)) -> str | None:
    """The token of `Authorization: jwt <token>` (the websocket's only scheme; the history API
    also takes `Bearer`); the scheme is matched case-insensitively."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() not in schemes or not token.strip():
        return None
    return token.strip()
