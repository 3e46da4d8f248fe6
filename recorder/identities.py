"""Consumer identities from the configuration: where each one's tokens come from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp

from recorder.config import ConsumerIdentity, Settings
from recorder.errors import ConfigError
from recorder.ums.tokens import FileTokenSource, SignupTokenSource, StaticTokenSource, TokenSource


def token_source(
    identity: ConsumerIdentity,
    account: str,
    http: aiohttp.ClientSession,
    idp_url: Callable[[], Awaitable[str]],
) -> TokenSource:
    if identity.jwt is not None:
        return StaticTokenSource(identity.name, identity.jwt.reveal())
    if identity.jwt_file is not None:
        return FileTokenSource(identity.name, identity.jwt_file)
    if identity.signup:
        return SignupTokenSource(identity.name, account, http, idp_url)
    raise ConfigError(f"consumers.{identity.name}", "has no token source")


def require_recording_settings(settings: Settings) -> str:
    """The account, or a ConfigError saying what `recorder run` is missing."""
    if settings.account is None and not settings.identities():
        raise ConfigError(
            "RECORDER_ACCOUNT",
            "no LivePerson account and no consumer identities are configured; set "
            "RECORDER_ACCOUNT and RECORDER_CONSUMER_JWT(_FILE) or [[consumers]], or try "
            "`recorder demo`",
        )
    if settings.account is None:
        raise ConfigError("RECORDER_ACCOUNT", "is required to record")
    if not settings.identities():
        raise ConfigError(
            "RECORDER_CONSUMER_JWT",
            "no consumer identity: set RECORDER_CONSUMER_JWT, RECORDER_CONSUMER_JWT_FILE or "
            "[[consumers]] in the config file",
        )
    return settings.account
