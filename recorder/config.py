"""Settings: a TOML file, `RECORDER_*` environment mirrors (environment wins), secrets from files.

Every setting is declared once in `SETTINGS`; the README table and its test are derived from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from recorder.errors import ConfigError
from recorder.exports.jobs import ExportJob, parse_exports


class Secret:
    """A value that must never be printed: repr and str are masked."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclasses.dataclass(frozen=True)
class ConsumerIdentity:
    """One consumer identity from TOML `[[consumers]]` (or the single-identity settings)."""

    name: str
    jwt: Secret | None = None
    jwt_file: Path | None = None
    signup: bool = False


@dataclasses.dataclass(frozen=True)
class ApiToken:
    """One named read-API token from TOML `[[api_tokens]]`; the name is what the audit shows."""

    name: str
    token: Secret


@dataclasses.dataclass(frozen=True)
class Settings:
    config_file: Path | None = None
    database_url: Secret | None = None
    state_dir: Path = Path("var")
    account: str | None = None
    csds_url: str = "https://api.liveperson.net"
    ums_url: str | None = None
    consumer_jwt: Secret | None = None
    consumer_jwt_file: Path | None = None
    consumers: tuple[ConsumerIdentity, ...] = ()
    exports: tuple[ExportJob, ...] = ()
    api_listen: str = "127.0.0.1:8780"
    api_token: Secret | None = None
    api_tokens: tuple[ApiToken, ...] = ()
    log_format: str = "text"
    log_level: str = "INFO"
    queue_size: int = 10_000
    writer_batch_size: int = 1_000
    writer_batch_wait_ms: float = 2.0
    api_workers: int = 1
    listen_notify: bool = True
    closed_grace_s: float = 3600.0
    instance: str | None = None
    lease_ttl_s: float = 15.0
    database_pooling: str = "session"
    agent_profiles: bool = True
    agent_profile_ttl_s: float = 86_400.0
    reconcile: bool = True
    reconcile_after_s: float = 300.0
    reconcile_retry_s: float = 900.0
    rest_requests_per_minute: float = 120.0
    rest_retry_s: tuple[float, ...] = (5.0, 10.0, 15.0)

    @property
    def instance_name(self) -> str:
        """RECORDER_INSTANCE, else this host's name and this process's id."""
        return self.instance or default_instance_name()

    @property
    def api_host_port(self) -> tuple[str, int]:
        return split_host_port(self.api_listen, "RECORDER_API_LISTEN")

    def api_credentials(self) -> dict[str, str]:
        """Every read-API token by name: RECORDER_API_TOKEN as `default`, then
        `[[api_tokens]]`. Empty: no authentication (loopback only)."""
        found = {} if self.api_token is None else {DEFAULT_TOKEN_NAME: self.api_token.reveal()}
        found.update((t.name, t.token.reveal()) for t in self.api_tokens)
        return found

    def identities(self) -> tuple[ConsumerIdentity, ...]:
        """All configured identities: the single-identity settings first, then `[[consumers]]`."""
        single: list[ConsumerIdentity] = []
        if self.consumer_jwt is not None or self.consumer_jwt_file is not None:
            single.append(
                ConsumerIdentity(
                    name="default", jwt=self.consumer_jwt, jwt_file=self.consumer_jwt_file
                )
            )
        return (*single, *self.consumers)


# -- parsers: each takes the raw value and the setting's name (for the error message) ------------


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(name, "must be a non-empty string")
    return value.strip()


def _whole_number(low: int, high: int) -> Callable[[Any, str], int]:
    """A whole number from `low` to `high`: anything outside is a typo, not a wish."""

    def parse(value: Any, name: str) -> int:
        if isinstance(value, bool | float):
            raise ConfigError(name, f"must be a whole number, got {value!r}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(name, f"must be a whole number, got {value!r}") from None
        if not low <= number <= high:
            raise ConfigError(name, f"must be from {low:,} to {high:,}, got {number:,}")
        return number

    return parse


def _number(low: float, high: float) -> Callable[[Any, str], float]:
    """A finite number from `low` to `high`."""

    def parse(value: Any, name: str) -> float:
        if isinstance(value, bool):
            raise ConfigError(name, f"must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(name, f"must be a number, got {value!r}") from None
        if not math.isfinite(number) or not low <= number <= high:
            raise ConfigError(name, f"must be from {low:g} to {high:g}, got {value!r}")
        return number

    return parse


def _choice(*choices: str) -> Callable[[Any, str], str]:
    def parse(value: Any, name: str) -> str:
        text = _text(value, name).lower()
        if text not in choices:
            raise ConfigError(name, f"must be one of {', '.join(choices)}; got {value!r}")
        return text

    return parse


def _switch(value: Any, name: str) -> bool:
    """A boolean: TOML true/false, or the words an environment variable can carry."""
    if isinstance(value, bool):
        return value
    text = _text(value, name).lower() if isinstance(value, str) else None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, f"must be true or false, got {value!r}")


def _log_level(value: Any, name: str) -> str:
    return _choice("debug", "info", "warning", "error")(value, name).upper()


def default_instance_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _instance(value: Any, name: str) -> str:
    text = _text(value, name)
    if not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,100}", text):
        raise ConfigError(name, "must be 1 to 100 letters, digits or . _ - : @")
    return text


def _account(value: Any, name: str) -> str:
    text = _text(value, name)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", text):
        raise ConfigError(name, "must be a LivePerson account id (letters, digits, - or _)")
    return text


def _url(*schemes: str) -> Callable[[Any, str], str]:
    def parse(value: Any, name: str) -> str:
        text = _text(value, name).rstrip("/")
        parts = urlsplit(text)
        if parts.scheme not in schemes or not parts.netloc:
            raise ConfigError(name, f"must be a URL starting with {' or '.join(schemes)}://")
        return text

    return parse


def _database_url(value: Any, name: str) -> Secret:
    text = _text(value, name)
    try:
        scheme = urlsplit(text).scheme
    except ValueError:
        raise ConfigError(name, "is not a valid URL") from None
    if scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
        # The URL may hold a password: name the setting, never echo the value.
        raise ConfigError(name, "must be a postgresql:// URL")
    # Several hosts (`host1:5432,host2:5432`, libpq's syntax for failover with
    # target_session_attrs): each one's port is checked.
    hosts = urlsplit(text).netloc.rsplit("@", 1)[-1]
    for host in hosts.split(","):
        try:
            port = urlsplit(f"//{host}").port
        except ValueError:
            port = -1
        if port is not None and not 0 < port < 65536:
            raise ConfigError(name, "has a port that is not a number from 1 to 65535")
    return Secret(text)


def _secret(value: Any, name: str) -> Secret:
    return Secret(_text(value, name))


def _readable_file(value: Any, name: str) -> Path:
    path = Path(_text(value, name)).expanduser()
    try:
        if not path.is_file():
            raise ConfigError(name, f"file {str(path)!r} does not exist or is not a file")
        path.read_bytes()
    except OSError as exc:
        raise ConfigError(name, f"file {str(path)!r} cannot be read: {exc.strerror}") from exc
    return path


def _token_file(value: Any, name: str) -> Path:
    """A file holding a token: readable and not empty at start (it is re-read later)."""
    path = _readable_file(value, name)
    if not path.read_bytes().strip():
        raise ConfigError(name, f"file {str(path)!r} is empty")
    return path


def _path(value: Any, name: str) -> Path:
    return Path(_text(value, name)).expanduser()


def split_host_port(value: str, name: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(name, f"must be host:port, got {value!r}")
    return host, int(port_text)


def _listen(value: Any, name: str) -> str:
    text = _text(value, name)
    split_host_port(text, name)
    return text


def _delays(value: Any, name: str) -> tuple[float, ...]:
    """Retry delays in seconds: a TOML array or comma-separated text, 1 to 10 of them."""
    items = value if isinstance(value, list) else str(value).split(",")
    try:
        delays = tuple(float(str(item).strip()) for item in items)
    except ValueError:
        raise ConfigError(name, f"must be seconds separated by commas, got {value!r}") from None
    if not 1 <= len(delays) <= 10 or not all(math.isfinite(d) and 0 <= d <= 600
                                              for d in delays):
        raise ConfigError(name, "must be 1 to 10 delays of 0 to 600 seconds each")
    return delays


@dataclasses.dataclass(frozen=True)
class SettingSpec:
    field: str
    env: str
    parse: Callable[[Any, str], Any]
    description: str
    #: what values are accepted (the README table's "allowed" column)
    allowed: str
    default_text: str
    secret: bool = False
    #: `*_FILE` variant: the setting's value is read from that file.
    file_env: str | None = None


#: Bounds of the numeric settings. Past them a value is a typo: a million queued events is
#: about a gigabyte of memory, and a batch window over a second is latency nobody wants.
QUEUE_SIZE_MAX = 1_000_000
CLOSED_GRACE_S_MAX = 7 * 24 * 3600
LEASE_TTL_S_MIN, LEASE_TTL_S_MAX = 1.0, 300.0
WRITER_BATCH_SIZE_MAX = 100_000
WRITER_BATCH_WAIT_MS_MAX = 1_000
API_WORKERS_MAX = 64

SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec(
        "database_url", "RECORDER_DATABASE_URL", _database_url,
        "PostgreSQL URL", "`postgresql://` URL", "unset: embedded PostgreSQL in the state dir",
        secret=True, file_env="RECORDER_DATABASE_URL_FILE",
    ),
    SettingSpec(
        "state_dir", "RECORDER_STATE_DIR", _path,
        "where embedded data and local state live", "a writable directory (created if missing)",
        "`$STATE_DIRECTORY` under systemd, else `./var`",
    ),
    SettingSpec(
        "account", "RECORDER_ACCOUNT", _account,
        "LivePerson account id", "1 to 64 letters, digits, `-` or `_`",
        "(required unless simulating)",
    ),
    SettingSpec(
        "csds_url", "RECORDER_CSDS_URL", _url("https", "http"),
        "base URL of the domain lookup", "`https://` or `http://` URL",
        "`https://api.liveperson.net`",
    ),
    SettingSpec(
        "ums_url", "RECORDER_UMS_URL", _url("wss", "ws"),
        "`scheme://host[:port]` of the UMS websocket; skips the domain lookup",
        "`wss://` or `ws://` URL", "from CSDS",
    ),
    SettingSpec(
        "consumer_jwt", "RECORDER_CONSUMER_JWT", _secret,
        "a single consumer identity's JWT", "non-empty text", "none",
        secret=True,
    ),
    SettingSpec(
        "consumer_jwt_file", "RECORDER_CONSUMER_JWT_FILE", _token_file,
        "file holding that JWT, re-read whenever a fresh token is needed",
        "a readable, non-empty file", "none",
    ),
    SettingSpec(
        "api_listen", "RECORDER_API_LISTEN", _listen,
        "read API host:port", "`host:port`, port 1 to 65,535, an address of this host",
        "`127.0.0.1:8780`",
    ),
    SettingSpec(
        "api_token", "RECORDER_API_TOKEN", _secret,
        "bearer token for the read API", "non-empty text",
        "none: refused on a non-loopback address",
        secret=True, file_env="RECORDER_API_TOKEN_FILE",
    ),
    SettingSpec(
        "log_format", "RECORDER_LOG_FORMAT", _choice("text", "json", "journal"),
        "log line format", "`text`, `json` or `journal`", "`journal` under systemd, else `text`",
    ),
    SettingSpec(
        "log_level", "RECORDER_LOG_LEVEL", _log_level,
        "least severe level logged", "`debug`, `info`, `warning` or `error`", "`info`",
    ),
    SettingSpec(
        "queue_size", "RECORDER_QUEUE_SIZE", _whole_number(1, QUEUE_SIZE_MAX),
        "events held between the sockets and the writer before receivers stop reading",
        f"1 to {QUEUE_SIZE_MAX:,}", "`10000`",
    ),
    SettingSpec(
        "writer_batch_size", "RECORDER_WRITER_BATCH_SIZE",
        _whole_number(1, WRITER_BATCH_SIZE_MAX),
        "most events the writer commits in one transaction",
        f"1 to {WRITER_BATCH_SIZE_MAX:,}", "`1000`",
    ),
    SettingSpec(
        "writer_batch_wait_ms", "RECORDER_WRITER_BATCH_WAIT_MS",
        _number(0, WRITER_BATCH_WAIT_MS_MAX),
        "how long the writer waits to fill a batch (a stop never waits it out)",
        f"0 to {WRITER_BATCH_WAIT_MS_MAX:,} (milliseconds, fractions allowed)", "`2`",
    ),
    SettingSpec(
        "api_workers", "RECORDER_API_WORKERS", _whole_number(1, API_WORKERS_MAX),
        "read API worker processes, all on the API port (`SO_REUSEPORT`)",
        f"1 to {API_WORKERS_MAX}", "`1`",
    ),
    SettingSpec(
        "listen_notify", "RECORDER_LISTEN_NOTIFY", _switch,
        "wake the projector and the change feed by `LISTEN/NOTIFY`; `false` behind a "
        "transaction-pooling PgBouncer (they poll instead)",
        "`true` or `false`", "`true`",
    ),
    SettingSpec(
        "closed_grace_s", "RECORDER_CLOSED_GRACE_S", _number(0, CLOSED_GRACE_S_MAX),
        "how long the dialogs of a closed conversation stay subscribed (late receipts, survey "
        "answers) before they are let go of and not resubscribed on reconnect",
        f"0 to {CLOSED_GRACE_S_MAX:,} (seconds)", "`3600`",
    ),
    SettingSpec(
        "database_pooling", "RECORDER_DATABASE_POOLING", _choice("session", "transaction"),
        "`transaction` when RECORDER_DATABASE_URL goes through a transaction-pooling PgBouncer: "
        "no prepared statements kept, no LISTEN (the roles poll), export jobs locked by lease",
        "`session` or `transaction`", "`session`",
    ),
    SettingSpec(
        "agent_profiles", "RECORDER_AGENT_PROFILES", _switch,
        "fetch each agent's public profile (nickname, picture) as the agent first appears, "
        "into the log as an `agent` event", "`true` or `false`", "`true`",
    ),
    SettingSpec(
        "agent_profile_ttl_s", "RECORDER_AGENT_PROFILE_TTL_S", _number(60, 30 * 86_400),
        "how long a fetched profile (or a 404: unknown agent) is kept before it is fetched "
        "again on the agent's next appearance", "60 to 2,592,000 (seconds)", "`86400`",
    ),
    SettingSpec(
        "reconcile", "RECORDER_RECONCILE", _switch,
        "check each closed conversation against LivePerson's Messaging History and backfill "
        "what the socket never delivered", "`true` or `false`", "`true`",
    ),
    SettingSpec(
        "reconcile_after_s", "RECORDER_RECONCILE_AFTER_S", _number(0, 7 * 86_400),
        "how long a closed conversation stays quiet before it is checked (the history needs "
        "time too); also the delay after a reconnect before open conversations are checked",
        "0 to 604,800 (seconds)", "`300`",
    ),
    SettingSpec(
        "reconcile_retry_s", "RECORDER_RECONCILE_RETRY_S", _number(1, 7 * 86_400),
        "how long before a conversation checked against a partial history, or whose check "
        "failed, is checked again", "1 to 604,800 (seconds)", "`900`",
    ),
    SettingSpec(
        "rest_requests_per_minute", "RECORDER_REST_REQUESTS_PER_MINUTE", _number(1, 60_000),
        "budget of REST requests (profiles and history, retries included) per process and "
        "minute, so a backlog never bursts", "1 to 60,000", "`120`",
    ),
    SettingSpec(
        "rest_retry_s", "RECORDER_REST_RETRY_S", _delays,
        "delays before each retry of a REST request answered 5xx or not at all (a 429 waits "
        "at least a second, always)", "1 to 10 delays of 0 to 600 seconds, comma-separated",
        "`5,10,15`",
    ),
    SettingSpec(
        "instance", "RECORDER_INSTANCE", _instance,
        "this instance's name among the instances sharing the database (leases, status, logs)",
        "1 to 100 letters, digits or `. _ - : @`, unique per instance",
        "host name and process id",
    ),
    SettingSpec(
        "lease_ttl_s", "RECORDER_LEASE_TTL_S", _number(LEASE_TTL_S_MIN, LEASE_TTL_S_MAX),
        "how long a lease (an identity, the projector, the exports) outlives its holder's last "
        "heartbeat; heartbeats come every third of it",
        f"{LEASE_TTL_S_MIN:g} to {LEASE_TTL_S_MAX:g} (seconds)", "`15`",
    ),
)

CONFIG_ENV = "RECORDER_CONFIG"


def _toml_key(spec: SettingSpec) -> str:
    return spec.field


def _read_secret_file(path_text: str, name: str) -> str:
    path = _readable_file(path_text, name)
    try:
        content = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(name, f"file {str(path)!r} is not UTF-8 text") from None
    if not content:
        raise ConfigError(name, f"file {str(path)!r} is empty")
    return content


def _tables(raw: Any, section: str, keys: set[str],
            unknown_hint: str = "") -> list[tuple[int, str, dict[str, Any]]]:
    """The entries of a TOML array of tables (`[[section]]`): (index, where, entry), each
    a table with no key outside `keys`."""
    if not isinstance(raw, list):
        raise ConfigError(section, f"must be an array of tables ([[{section}]])")
    entries: list[tuple[int, str, dict[str, Any]]] = []
    for index, entry in enumerate(raw):
        where = f"{section}[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(where, "must be a table")
        unknown = set(entry) - keys
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}",
                              "is not a known setting" + unknown_hint)
        entries.append((index, where, entry))
    return entries


def _require_unique_names(section: str, names: list[str]) -> None:
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(section, f"names must be unique; {duplicated[0]!r} repeats")


def _parse_consumers(raw: Any) -> tuple[ConsumerIdentity, ...]:
    identities: list[ConsumerIdentity] = []
    for index, where, entry in _tables(raw, "consumers", {"name", "jwt", "jwt_file", "signup"}):
        signup = entry.get("signup", False)
        if not isinstance(signup, bool):
            raise ConfigError(f"{where}.signup", "must be true or false")
        sources = [k for k in ("jwt", "jwt_file") if k in entry] + (["signup"] if signup else [])
        if len(sources) != 1:
            raise ConfigError(where, "needs exactly one of jwt, jwt_file or signup = true")
        name = _text(entry.get("name", f"consumer-{index + 1}"), f"{where}.name")
        identities.append(
            ConsumerIdentity(
                name=name,
                jwt=_secret(entry["jwt"], f"{where}.jwt") if "jwt" in entry else None,
                jwt_file=(
                    _token_file(entry["jwt_file"], f"{where}.jwt_file")
                    if "jwt_file" in entry
                    else None
                ),
                signup=signup,
            )
        )
    _require_unique_names("consumers", [identity.name for identity in identities])
    return tuple(identities)


DEFAULT_TOKEN_NAME = "default"


def _parse_api_tokens(raw: Any, single: bool) -> tuple[ApiToken, ...]:
    tokens: list[ApiToken] = []
    for _, where, entry in _tables(
            raw, "api_tokens", {"name", "token_file"},
            " (a token is read from token_file, never written in the file)"):
        for key in ("name", "token_file"):
            if key not in entry:
                raise ConfigError(f"{where}.{key}", "is required")
        name = _text(entry["name"], f"{where}.name")
        if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
            raise ConfigError(f"{where}.name", "must be 1 to 64 letters, digits or . _ - @")
        if single and name == DEFAULT_TOKEN_NAME:
            raise ConfigError(f"{where}.name", "'default' is taken by RECORDER_API_TOKEN")
        token = _read_secret_file(entry["token_file"], f"{where}.token_file")
        tokens.append(ApiToken(name, Secret(token)))
    _require_unique_names("api_tokens", [t.name for t in tokens])
    values = [t.token for t in tokens]
    if len(set(values)) != len(values):
        raise ConfigError("api_tokens", "two names share one token: the audit could not tell "
                          "them apart")
    return tuple(tokens)


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            CONFIG_ENV, f"config file {str(path)!r} is not UTF-8 text (byte {exc.start})"
        ) from None
    except IsADirectoryError:
        raise ConfigError(CONFIG_ENV, f"config file {str(path)!r} is a directory") from None
    except FileNotFoundError:
        raise ConfigError(CONFIG_ENV, f"config file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(CONFIG_ENV, f"config file {str(path)!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            CONFIG_ENV, f"config file {str(path)!r} is not valid TOML: {exc}"
        ) from exc


def load_settings(
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings from defaults < TOML file < environment < explicit overrides (CLI flags).

    Raises ConfigError naming the offending setting.
    """
    env = os.environ if environ is None else environ
    path_text = str(config_file) if config_file else env.get(CONFIG_ENV) or None
    file_values: dict[str, Any] = {}
    config_path: Path | None = None
    if path_text:
        config_path = Path(path_text).expanduser()
        file_values = _load_toml(config_path)

    known = {_toml_key(spec) for spec in SETTINGS} | {"consumers", "exports", "api_tokens"}
    known |= {spec.field + "_file" for spec in SETTINGS if spec.file_env}
    for key in file_values:
        if key not in known:
            raise ConfigError(key, f"is not a known setting (in {config_path})")

    values: dict[str, Any] = {"config_file": config_path}
    for spec in SETTINGS:
        raw: Any = None
        source = spec.env
        file_key = spec.field + "_file"
        if spec.file_env and file_values.get(file_key) is not None:
            raw, source = _read_secret_file(file_values[file_key], file_key), file_key
        if file_values.get(spec.field) is not None:
            raw, source = file_values[spec.field], spec.field
        if spec.file_env and env.get(spec.file_env):
            raw, source = _read_secret_file(env[spec.file_env], spec.file_env), spec.file_env
        if env.get(spec.env):
            raw, source = env[spec.env], spec.env
        if overrides and overrides.get(spec.field) is not None:
            raw, source = overrides[spec.field], spec.env
        if raw is not None:
            values[spec.field] = spec.parse(raw, source)

    if "state_dir" not in values and env.get("STATE_DIRECTORY"):
        # systemd may pass several colon-separated directories; the first is ours.
        values["state_dir"] = Path(env["STATE_DIRECTORY"].split(":")[0])
    if "log_format" not in values and env.get("JOURNAL_STREAM"):
        values["log_format"] = "journal"
    if "consumers" in file_values:
        values["consumers"] = _parse_consumers(file_values["consumers"])
    if "api_tokens" in file_values:
        values["api_tokens"] = _parse_api_tokens(file_values["api_tokens"],
                                                 values.get("api_token") is not None)
        if any(t.token == values.get("api_token") for t in values["api_tokens"]):
            raise ConfigError("api_tokens", "a named token repeats RECORDER_API_TOKEN")
    if "exports" in file_values:
        values["exports"] = parse_exports(
            file_values["exports"], values.get("state_dir", Settings.state_dir)
        )
    single = values.get("consumer_jwt") is not None or values.get("consumer_jwt_file") is not None
    if single and any(c.name == "default" for c in values.get("consumers", ())):
        raise ConfigError(
            "consumers", "the name 'default' is taken by RECORDER_CONSUMER_JWT(_FILE)"
        )
    if values.get("consumer_jwt") is not None and values.get("consumer_jwt_file") is not None:
        raise ConfigError(
            "RECORDER_CONSUMER_JWT",
            "set either RECORDER_CONSUMER_JWT or RECORDER_CONSUMER_JWT_FILE, not both",
        )
    return Settings(**values)
