"""Settings: defaults < TOML file < environment < explicit overrides, secrets kept secret.

Every test passes an explicit `environ`, so the real process environment never leaks in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from recorder.config import ConsumerIdentity, Secret, Settings, load_settings
from recorder.db.target import mask_url
from recorder.errors import ConfigError


def write_file(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def toml_line(key: str, value: Any) -> str:
    if isinstance(value, str):
        return f'{key} = "{value}"'
    return f"{key} = {str(value).lower() if isinstance(value, bool) else value}"


def write_toml(directory: Path, text: str = "", **values: Any) -> Path:
    lines = [toml_line(key, value) for key, value in values.items()]
    return write_file(directory, "recorder.toml", "\n".join(lines) + "\n" + text)


def config_error(
    *, environ: dict[str, str] | None = None, config_file: Path | None = None
) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file, environ=environ or {})
    return caught.value


def assert_names(error: ConfigError, setting: str) -> None:
    assert error.setting == setting
    assert setting in str(error)


# -- defaults --------------------------------------------------------------------------------------


def test_defaults_when_nothing_is_set() -> None:
    settings = load_settings(environ={})

    assert settings.config_file is None
    assert settings.database_url is None
    assert settings.state_dir == Path("var")
    assert settings.api_listen == "127.0.0.1:8780"
    assert settings.api_host_port == ("127.0.0.1", 8780)
    assert settings.log_format == "text"
    assert settings.log_level == "INFO"
    assert settings.csds_url == "https://api.liveperson.net"
    assert settings.ums_url is None
    assert settings.account is None
    assert settings.api_token is None
    assert settings.identities() == ()


def test_an_empty_environment_value_counts_as_unset() -> None:
    settings = load_settings(environ={"RECORDER_LOG_FORMAT": "", "RECORDER_API_LISTEN": ""})

    assert (settings.log_format, settings.api_listen) == ("text", "127.0.0.1:8780")


# -- layering: file < environment < overrides ------------------------------------------------------

LAYERED = [
    # field, environment variable, TOML value, environment value, override value, parsed form
    ("log_level", "RECORDER_LOG_LEVEL", "warning", "error", "debug", str.upper),
    ("log_format", "RECORDER_LOG_FORMAT", "json", "journal", "text", str),
    ("state_dir", "RECORDER_STATE_DIR", "/from/toml", "/from/env", "/from/flag", Path),
    ("api_listen", "RECORDER_API_LISTEN", "127.0.0.1:1001", "127.0.0.1:1002", "[::1]:1003", str),
    ("queue_size", "RECORDER_QUEUE_SIZE", 11, "12", 13, int),
    (
        "database_url", "RECORDER_DATABASE_URL",
        "postgresql://toml-host/db", "postgresql://env-host/db", "postgres://flag-host/db",
        Secret,
    ),
]


@pytest.mark.parametrize("layers", ["file", "file+env", "file+env+override"])
@pytest.mark.parametrize(
    ("field", "env_name", "from_file", "from_env", "from_override", "parsed"),
    LAYERED,
    ids=[row[0] for row in LAYERED],
)
def test_each_layer_beats_the_one_below(
    tmp_path: Path,
    layers: str,
    field: str,
    env_name: str,
    from_file: Any,
    from_env: str,
    from_override: Any,
    parsed: Callable[[Any], Any],
) -> None:
    config = write_toml(tmp_path, **{field: from_file})
    environ = {env_name: from_env} if "env" in layers else {}
    overrides = {field: from_override} if "override" in layers else None

    settings = load_settings(config, environ=environ, overrides=overrides)

    expected = {"file": from_file, "file+env": from_env, "file+env+override": from_override}
    assert getattr(settings, field) == parsed(expected[layers])
    assert settings.config_file == config


def test_a_none_override_leaves_the_environment_value() -> None:
    settings = load_settings(
        environ={"RECORDER_LOG_LEVEL": "error"}, overrides={"log_level": None}
    )

    assert settings.log_level == "ERROR"


def test_recorder_config_in_the_environment_selects_the_file(tmp_path: Path) -> None:
    config = write_toml(tmp_path, log_level="warning", account="acct-1")

    settings = load_settings(environ={"RECORDER_CONFIG": str(config)})

    assert settings.config_file == config
    assert (settings.log_level, settings.account) == ("WARNING", "acct-1")


def test_an_explicit_config_file_beats_recorder_config(tmp_path: Path) -> None:
    from_env = write_file(tmp_path, "env.toml", 'account = "from-env"\n')
    explicit = write_file(tmp_path, "flag.toml", 'account = "from-flag"\n')

    settings = load_settings(explicit, environ={"RECORDER_CONFIG": str(from_env)})

    assert (settings.config_file, settings.account) == (explicit, "from-flag")


# -- systemd ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"STATE_DIRECTORY": "/var/lib/recorder"}, "/var/lib/recorder"),
        ({"STATE_DIRECTORY": "/var/lib/recorder:/var/lib/other"}, "/var/lib/recorder"),
        (
            {"STATE_DIRECTORY": "/var/lib/recorder", "RECORDER_STATE_DIR": "/srv/recorder"},
            "/srv/recorder",
        ),
    ],
    ids=["single", "first-of-list", "recorder-state-dir-wins"],
)
def test_state_directory_from_systemd(environ: dict[str, str], expected: str) -> None:
    assert load_settings(environ=environ).state_dir == Path(expected)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"JOURNAL_STREAM": "8:123456"}, "journal"),
        ({"JOURNAL_STREAM": "8:123456", "RECORDER_LOG_FORMAT": "json"}, "json"),
        ({}, "text"),
    ],
    ids=["journal-stream", "explicit-format-wins", "no-journal"],
)
def test_journal_stream_makes_journal_the_default(
    environ: dict[str, str], expected: str
) -> None:
    assert load_settings(environ=environ).log_format == expected


# -- secrets from files ----------------------------------------------------------------------------

# (how the file is named, the setting that names it, the field it fills, a valid value)
SECRET_FILES = [
    ("env", "RECORDER_API_TOKEN_FILE", "api_token", "token-from-file"),
    ("env", "RECORDER_DATABASE_URL_FILE", "database_url", "postgresql://u:pw@h/from_file"),
    ("toml", "api_token_file", "api_token", "token-from-toml-file"),
    ("toml", "database_url_file", "database_url", "postgresql://u:pw@h/from_toml_file"),
]
SECRET_FILE_IDS = [row[1] for row in SECRET_FILES]


def load_with_secret_file(tmp_path: Path, via: str, name: str, path: Path) -> Settings:
    if via == "env":
        return load_settings(environ={name: str(path)})
    return load_settings(write_toml(tmp_path, **{name: str(path)}), environ={})


@pytest.mark.parametrize(("via", "name", "field", "value"), SECRET_FILES, ids=SECRET_FILE_IDS)
def test_secret_read_from_file_is_stripped(
    tmp_path: Path, via: str, name: str, field: str, value: str
) -> None:
    secret_file = write_file(tmp_path, "secret", f"  {value}\n\n")

    settings = load_with_secret_file(tmp_path, via, name, secret_file)

    secret = getattr(settings, field)
    assert isinstance(secret, Secret)
    assert secret.reveal() == value


@pytest.mark.parametrize(("via", "name", "field", "value"), SECRET_FILES, ids=SECRET_FILE_IDS)
@pytest.mark.parametrize("problem", ["empty", "missing"])
def test_bad_secret_file_is_rejected_naming_the_setting(
    tmp_path: Path, problem: str, via: str, name: str, field: str, value: str
) -> None:
    secret_file = tmp_path / "secret"
    if problem == "empty":
        write_file(tmp_path, "secret", " \n\t\n")

    with pytest.raises(ConfigError) as caught:
        load_with_secret_file(tmp_path, via, name, secret_file)

    assert_names(caught.value, name)
    assert str(secret_file) in str(caught.value)


def test_environment_secret_beats_the_toml_secret_file(tmp_path: Path) -> None:
    token_file = write_file(tmp_path, "token", "from-file\n")
    config = write_toml(tmp_path, api_token_file=str(token_file))

    settings = load_settings(config, environ={"RECORDER_API_TOKEN": "from-env"})

    assert settings.api_token == Secret("from-env")


# -- consumer identities ---------------------------------------------------------------------------


def test_single_jwt_and_jwt_file_together_are_rejected(tmp_path: Path) -> None:
    jwt_file = write_file(tmp_path, "jwt", "jwt-in-file\n")

    error = config_error(
        environ={"RECORDER_CONSUMER_JWT": "jwt-inline", "RECORDER_CONSUMER_JWT_FILE": str(jwt_file)}
    )

    assert_names(error, "RECORDER_CONSUMER_JWT")
    assert "RECORDER_CONSUMER_JWT_FILE" in str(error)


CONSUMERS_TOML = """
[[consumers]]
name = "alice"
jwt = "jwt-alice"

[[consumers]]
name = "bob"
signup = true

[[consumers]]
jwt_file = "{jwt_file}"
"""


@pytest.mark.parametrize("single", ["jwt", "jwt_file", "none"])
def test_identities_single_first_then_consumers(tmp_path: Path, single: str) -> None:
    jwt_file = write_file(tmp_path, "jwt", "jwt-from-file\n")
    config = write_file(tmp_path, "c.toml", CONSUMERS_TOML.format(jwt_file=jwt_file))
    environ = {
        "jwt": {"RECORDER_CONSUMER_JWT": "jwt-single"},
        "jwt_file": {"RECORDER_CONSUMER_JWT_FILE": str(jwt_file)},
        "none": {},
    }[single]

    identities = load_settings(config, environ=environ).identities()

    from_toml = (
        ConsumerIdentity(name="alice", jwt=Secret("jwt-alice")),
        ConsumerIdentity(name="bob", signup=True),
        ConsumerIdentity(name="consumer-3", jwt_file=jwt_file),
    )
    expected_single = {
        "jwt": (ConsumerIdentity(name="default", jwt=Secret("jwt-single")),),
        "jwt_file": (ConsumerIdentity(name="default", jwt_file=jwt_file),),
        "none": (),
    }[single]
    assert identities == (*expected_single, *from_toml)


BAD_CONSUMERS = {
    "jwt-and-jwt-file": ('jwt = "a"\njwt_file = "{jwt_file}"', "consumers[0]"),
    "no-source": ('name = "nobody"', "consumers[0]"),
    "jwt-and-signup": ('jwt = "a"\nsignup = true', "consumers[0]"),
    "signup-false-only": ("signup = false", "consumers[0]"),
    "signup-not-bool": ('signup = "yes"', "consumers[0].signup"),
    "signup-number": ("signup = 1", "consumers[0].signup"),
    "unknown-key": ('jwt = "a"\ntoken = "b"', "consumers[0].token"),
    "missing-jwt-file": ('jwt_file = "{missing}"', "consumers[0].jwt_file"),
    "empty-name": ('name = ""\njwt = "a"', "consumers[0].name"),
}


@pytest.mark.parametrize(("entry", "setting"), BAD_CONSUMERS.values(), ids=BAD_CONSUMERS.keys())
def test_bad_consumer_entry_is_rejected(tmp_path: Path, entry: str, setting: str) -> None:
    jwt_file = write_file(tmp_path, "jwt", "x\n")
    body = entry.format(jwt_file=jwt_file, missing=tmp_path / "absent")
    config = write_file(tmp_path, "c.toml", f"[[consumers]]\n{body}\n")

    assert_names(config_error(config_file=config), setting)


def test_error_in_a_later_consumer_names_its_index(tmp_path: Path) -> None:
    config = write_file(
        tmp_path,
        "c.toml",
        '[[consumers]]\njwt = "a"\n\n[[consumers]]\nsignup = true\ncolour = "red"\n',
    )

    assert_names(config_error(config_file=config), "consumers[1].colour")


@pytest.mark.parametrize(
    "names", [("same", "same"), ("consumer-2", None)], ids=["explicit", "explicit-vs-default"]
)
def test_duplicate_consumer_names_are_rejected(
    tmp_path: Path, names: tuple[str | None, str | None]
) -> None:
    entries = [
        "[[consumers]]\n" + (f'name = "{name}"\n' if name else "") + 'jwt = "a"\n'
        for name in names
    ]
    config = write_file(tmp_path, "c.toml", "\n".join(entries))

    error = config_error(config_file=config)

    assert_names(error, "consumers")
    assert repr(names[0]) in str(error)


def test_consumers_must_be_an_array_of_tables(tmp_path: Path) -> None:
    config = write_file(tmp_path, "c.toml", 'consumers = "alice"\n')

    assert_names(config_error(config_file=config), "consumers")


# -- the configuration file itself -----------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["colour", "api_tokn", "RECORDER_LOG_LEVEL", "consumer_jwt_file_file"]
)
def test_unknown_top_level_key_is_rejected_naming_it(tmp_path: Path, key: str) -> None:
    config = write_toml(tmp_path, log_level="info", **{key: "x"})

    error = config_error(config_file=config)

    assert_names(error, key)
    assert str(config) in str(error)


@pytest.mark.parametrize("via", ["argument", "RECORDER_CONFIG"])
@pytest.mark.parametrize("problem", ["invalid-toml", "missing", "directory", "not-utf8"])
def test_unusable_config_file_is_rejected_naming_recorder_config(
    tmp_path: Path, via: str, problem: str
) -> None:
    not_utf8 = tmp_path / "latin1.toml"
    not_utf8.write_bytes('account = "caf\u00e9"\n'.encode("latin-1"))
    path = {
        "invalid-toml": write_file(tmp_path, "bad.toml", "log_level = \n[[[\n"),
        "missing": tmp_path / "absent.toml",
        "directory": tmp_path,
        "not-utf8": not_utf8,
    }[problem]

    if via == "argument":
        error = config_error(config_file=path)
    else:
        error = config_error(environ={"RECORDER_CONFIG": str(path)})

    assert_names(error, "RECORDER_CONFIG")
    assert str(path) in str(error)


# -- value validation ------------------------------------------------------------------------------

BAD_VALUES = [
    ("RECORDER_LOG_FORMAT", "bogus"),
    ("RECORDER_API_LISTEN", "nohost"),
    ("RECORDER_API_LISTEN", "127.0.0.1:99999"),
    ("RECORDER_API_LISTEN", ":80"),
    ("RECORDER_API_LISTEN", "127.0.0.1:0"),
    ("RECORDER_API_LISTEN", "127.0.0.1:http"),
    ("RECORDER_ACCOUNT", "my account"),
    ("RECORDER_UMS_URL", "http://x"),
    ("RECORDER_UMS_URL", "wss://"),
    ("RECORDER_CSDS_URL", "ftp://x"),
    ("RECORDER_DATABASE_URL", "mysql://u:p@h/d"),
    ("RECORDER_QUEUE_SIZE", "0"),
    ("RECORDER_QUEUE_SIZE", "abc"),
    ("RECORDER_WRITER_BATCH_SIZE", "-1"),
    ("RECORDER_WRITER_BATCH_WAIT_MS", "-3"),
    ("RECORDER_WRITER_BATCH_WAIT_MS", "soon"),
    # Out of any sane range: each was accepted once.
    ("RECORDER_WRITER_BATCH_WAIT_MS", "60000"),
    ("RECORDER_WRITER_BATCH_WAIT_MS", "1e308"),
    ("RECORDER_WRITER_BATCH_WAIT_MS", "inf"),
    ("RECORDER_WRITER_BATCH_WAIT_MS", "nan"),
    ("RECORDER_QUEUE_SIZE", "99999999999999999999999"),
    ("RECORDER_QUEUE_SIZE", "1000001"),
    ("RECORDER_WRITER_BATCH_SIZE", "1000000000000"),
    ("RECORDER_WRITER_BATCH_SIZE", "100001"),
    ("RECORDER_LOG_LEVEL", "loud"),
    ("RECORDER_CONSUMER_JWT", "   "),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=[f"{n}={v}" for n, v in BAD_VALUES])
def test_bad_value_is_rejected_naming_the_setting(name: str, value: str) -> None:
    assert_names(config_error(environ={name: value}), name)


@pytest.mark.parametrize(
    ("key", "value"),
    [("queue_size", 10**20), ("writer_batch_size", 10**12), ("writer_batch_wait_ms", 60_000.0)],
)
def test_numbers_out_of_range_in_the_toml_file_are_rejected(
    tmp_path: Path, key: str, value: Any
) -> None:
    error = config_error(config_file=write_toml(tmp_path, **{key: value}))
    assert_names(error, key)
    assert "must be from" in str(error)


@pytest.mark.parametrize(
    ("key", "value"),
    [("log_format", "bogus"), ("queue_size", 0), ("api_listen", "nohost"), ("account", 12345)],
)
def test_bad_toml_value_is_rejected_naming_the_toml_key(
    tmp_path: Path, key: str, value: Any
) -> None:
    assert_names(config_error(config_file=write_toml(tmp_path, **{key: value})), key)


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("RECORDER_LOG_FORMAT", "JSON", "log_format", "json"),
        ("RECORDER_LOG_LEVEL", "Warning", "log_level", "WARNING"),
        ("RECORDER_API_LISTEN", "[::1]:8080", "api_host_port", ("::1", 8080)),
        ("RECORDER_API_LISTEN", "0.0.0.0:65535", "api_host_port", ("0.0.0.0", 65535)),
        ("RECORDER_ACCOUNT", " le-12_34 ", "account", "le-12_34"),
        ("RECORDER_UMS_URL", "wss://va.msg.liveperson.net/", "ums_url", "wss://va.msg.liveperson.net"),
        ("RECORDER_UMS_URL", "ws://localhost:9000", "ums_url", "ws://localhost:9000"),
        ("RECORDER_CSDS_URL", "http://localhost:8000/", "csds_url", "http://localhost:8000"),
        ("RECORDER_QUEUE_SIZE", "5", "queue_size", 5),
        ("RECORDER_WRITER_BATCH_SIZE", "1", "writer_batch_size", 1),
        ("RECORDER_WRITER_BATCH_WAIT_MS", "0", "writer_batch_wait_ms", 0.0),
        ("RECORDER_WRITER_BATCH_WAIT_MS", "2.5", "writer_batch_wait_ms", 2.5),
        # The bounds themselves are allowed.
        ("RECORDER_QUEUE_SIZE", "1000000", "queue_size", 1_000_000),
        ("RECORDER_WRITER_BATCH_SIZE", "100000", "writer_batch_size", 100_000),
        ("RECORDER_WRITER_BATCH_WAIT_MS", "1000", "writer_batch_wait_ms", 1000.0),
    ],
)
def test_good_value_is_parsed(name: str, value: str, field: str, expected: Any) -> None:
    assert getattr(load_settings(environ={name: value}), field) == expected


# -- secrets never leak ----------------------------------------------------------------------------

TOKEN = "tok-8c1f0a2e-never-print"
JWT = "jwt-4b7d93c5-never-print"
TOML_JWT = "jwt-e2a9d6f1-never-print"
DB_PASSWORD = "pw-61d0b8aa-never-print"


def test_secrets_do_not_appear_in_repr_or_str(tmp_path: Path) -> None:
    config = write_file(tmp_path, "c.toml", f'[[consumers]]\nname = "x"\njwt = "{TOML_JWT}"\n')
    settings = load_settings(
        config,
        environ={
            "RECORDER_API_TOKEN": TOKEN,
            "RECORDER_CONSUMER_JWT": JWT,
            "RECORDER_DATABASE_URL": f"postgresql://rec:{DB_PASSWORD}@db.example:5432/events",
        },
    )

    # they were loaded ...
    assert settings.api_token is not None and settings.api_token.reveal() == TOKEN
    assert [i.jwt.reveal() for i in settings.identities() if i.jwt] == [JWT, TOML_JWT]
    assert settings.database_url is not None
    assert DB_PASSWORD in settings.database_url.reveal()
    # ... and are not shown
    shown = [repr(settings), str(settings), *map(repr, settings.identities())]
    for text in shown:
        for secret in (TOKEN, JWT, TOML_JWT, DB_PASSWORD):
            assert secret not in text


@pytest.mark.parametrize("via", ["env", "file", "override"])
def test_rejected_database_url_does_not_echo_the_password(tmp_path: Path, via: str) -> None:
    url = f"mysql://user:{DB_PASSWORD}@h/d"
    url_file = write_file(tmp_path, "url", url)
    with pytest.raises(ConfigError) as caught:
        if via == "env":
            load_settings(environ={"RECORDER_DATABASE_URL": url})
        elif via == "file":
            load_settings(environ={"RECORDER_DATABASE_URL_FILE": str(url_file)})
        else:
            load_settings(environ={}, overrides={"database_url": url})

    assert caught.value.setting.startswith("RECORDER_DATABASE_URL")
    for text in (str(caught.value), repr(caught.value), caught.value.problem):
        assert DB_PASSWORD not in text


MASKED_URLS = [
    ("postgresql://rec:{pw}@db.example:5432/events", "rec", "db.example", "/events"),
    ("postgresql://postgres:{pw}@/recorder?host=/run/postgresql", "postgres", None, "/recorder"),
    ("postgresql+asyncpg://rec:{pw}@10.0.0.5/events?sslmode=require", "rec", "10.0.0.5", "/events"),
    ("postgresql://rec:{pw}@[::1]:5433/events", "rec", "::1", "/events"),
    pytest.param(
        "postgresql:///events?host=/run/postgresql&user=rec&password={pw}", None, None, "/events",
        id="password-in-query",
    ),
]


def without_password(query: str) -> list[tuple[str, str]]:
    return [(key, value) for key, value in parse_qsl(query) if key != "password"]


@pytest.mark.parametrize(("template", "user", "host", "path"), MASKED_URLS)
def test_mask_url_hides_the_password_and_keeps_the_rest(
    template: str, user: str | None, host: str | None, path: str
) -> None:
    url = template.format(pw=DB_PASSWORD)

    masked = mask_url(url)

    assert DB_PASSWORD not in masked
    parts, original = urlsplit(masked), urlsplit(url)
    assert (parts.scheme, parts.username, parts.hostname, parts.port) == (
        original.scheme, user, host, original.port
    )
    assert parts.path == path
    assert without_password(parts.query) == without_password(original.query)


def test_mask_url_leaves_a_url_without_password_alone() -> None:
    url = "postgresql://postgres:@/recorder?host=/tmp/pg"

    assert mask_url(url) == url


def test_database_url_with_a_non_numeric_port_is_rejected_at_start() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"RECORDER_DATABASE_URL": "postgresql://u:pw@127.0.0.1:notaport/d"})
    assert caught.value.setting == "RECORDER_DATABASE_URL"
    assert "pw" not in str(caught.value)


def test_database_url_may_name_several_hosts_each_port_checked() -> None:
    several = "postgresql://u:pw@db1:5432,db2:5433/d?target_session_attrs=read-write"
    settings = load_settings(environ={"RECORDER_DATABASE_URL": several})
    assert settings.database_url is not None and settings.database_url.reveal() == several
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"RECORDER_DATABASE_URL": "postgresql://u:pw@db1:5432,db2:x/d"})
    assert caught.value.setting == "RECORDER_DATABASE_URL" and "pw" not in str(caught.value)


def test_a_consumer_named_default_clashes_with_the_single_identity(tmp_path: Path) -> None:
    config = tmp_path / "recorder.toml"
    config.write_text('[[consumers]]\nname = "default"\nsignup = true\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={"RECORDER_CONSUMER_JWT": "a.b.c"})
    assert caught.value.setting == "consumers"


def test_an_empty_or_unreadable_token_file_is_rejected_at_start(tmp_path: Path) -> None:
    empty = write_file(tmp_path, "jwt", " \n")
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"RECORDER_CONSUMER_JWT_FILE": str(empty)})
    assert_names(caught.value, "RECORDER_CONSUMER_JWT_FILE")
    assert "empty" in str(caught.value)
    config = tmp_path / "many.toml"
    config.write_text(f'[[consumers]]\nname = "web"\njwt_file = "{empty}"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert_names(caught.value, "consumers[0].jwt_file")
    # A path under a file (ENOTDIR from the stat) is a configuration error, not a traceback.
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"RECORDER_CONSUMER_JWT_FILE": str(empty / "below")})
    assert_names(caught.value, "RECORDER_CONSUMER_JWT_FILE")


def test_named_api_tokens_are_read_from_their_files(tmp_path: Path) -> None:
    ops = write_file(tmp_path, "ops", "tok-ops-0123\n")
    qa = write_file(tmp_path, "qa", "tok-qa-4567")
    config = write_file(tmp_path, "t.toml", f"""
[[api_tokens]]
name = "ops"
token_file = "{ops}"

[[api_tokens]]
name = "quality.review"
token_file = "{qa}"
""")
    settings = load_settings(config, environ={"RECORDER_API_TOKEN": "tok-main"})
    assert settings.api_credentials() == {
        "default": "tok-main", "ops": "tok-ops-0123", "quality.review": "tok-qa-4567"}
    assert "tok-ops" not in repr(settings)
    assert load_settings(environ={}).api_credentials() == {}


@pytest.mark.parametrize(("entries", "setting"), [
    ('name = "ops"', "api_tokens[0].token_file"),
    ('token_file = "{f}"', "api_tokens[0].name"),
    ('name = "ops"\ntoken = "inline"\ntoken_file = "{f}"', "api_tokens[0].token"),
    ('name = "no spaces allowed"\ntoken_file = "{f}"', "api_tokens[0].name"),
    ('name = "default"\ntoken_file = "{f}"', "api_tokens[0].name"),
    ('name = "ops"\ntoken_file = "{f}.missing"', "api_tokens[0].token_file"),
    ('name = "ops"\ntoken_file = "{f}"\n\n[[api_tokens]]\nname = "ops"\ntoken_file = "{g}"',
     "api_tokens"),
    ('name = "ops"\ntoken_file = "{f}"\n\n[[api_tokens]]\nname = "qa"\ntoken_file = "{f}"',
     "api_tokens"),
])
def test_bad_named_api_tokens_fail_naming_the_setting(
    tmp_path: Path, entries: str, setting: str
) -> None:
    f = write_file(tmp_path, "f", "tok-f")
    g = write_file(tmp_path, "g", "tok-g")
    config = write_file(tmp_path, "t.toml",
                        "[[api_tokens]]\n" + entries.format(f=f, g=g) + "\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ={"RECORDER_API_TOKEN": "tok-main"})
    assert raised.value.setting == setting
    assert "tok-f" not in str(raised.value) and "tok-g" not in str(raised.value)
