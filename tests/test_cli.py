"""The `recorder` command line run as a real process: exit codes, output streams, no secrets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from recorder.db import migrate
from recorder.db.embedded import EmbeddedPostgres
from recorder.db.target import DatabaseTarget
from recorder.eventlog.writer import EventWriter
from tests.helpers import assert_log_contiguous, message_event

HEAD = migrate.head_revision()
TIMEOUT = 120
UNREACHABLE_URL = "postgresql://postgres@127.0.0.1:1/nope"


def recorder(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m recorder ARGS` with no RECORDER_* (or systemd) variables but `env`."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RECORDER_") and key not in ("STATE_DIRECTORY", "JOURNAL_STREAM")
    }
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "recorder", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def status_json(cwd: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    result = ok(recorder(cwd, *args, "status", "--json", env=env))
    status: dict[str, object] = json.loads(result.stdout)
    return status


def assert_migrated_now(result: subprocess.CompletedProcess[str]) -> None:
    ok(result)
    assert "upgraded" in result.stdout
    assert result.stdout.rstrip().endswith(f"to {HEAD}")


def assert_already_current(result: subprocess.CompletedProcess[str]) -> None:
    ok(result)
    assert f"already at revision {HEAD}" in result.stdout
    assert "upgraded" not in result.stdout


def current_revision(dsn: str) -> str | None:
    return asyncio.run(migrate.current_revision(DatabaseTarget(dsn=dsn, embedded=False)))


# -- against a database URL ------------------------------------------------------------------------


def test_migrate_then_status(tmp_path: Path, empty_database: DatabaseTarget) -> None:
    env = {"RECORDER_DATABASE_URL": empty_database.dsn}

    assert_migrated_now(recorder(tmp_path, "migrate", env=env))
    assert current_revision(empty_database.dsn) == HEAD
    assert_already_current(recorder(tmp_path, "migrate", env=env))

    text = ok(recorder(tmp_path, "status", env=env)).stdout
    lines = text.splitlines()
    assert f"schema revision: {HEAD}" in lines
    assert "log head:        0" in lines
    assert "recorder migrate" not in text

    status = status_json(tmp_path, env=env)
    assert status["schema_revision"] == HEAD
    assert status["expected_revision"] == HEAD
    assert status["log_head"] == 0
    assert status["schema_current"] is True
    assert status["embedded"] is False


def test_status_before_migrate_says_to_run_migrate(
    tmp_path: Path, empty_database: DatabaseTarget
) -> None:
    env = {"RECORDER_DATABASE_URL": empty_database.dsn}

    text = ok(recorder(tmp_path, "status", env=env)).stdout
    revision_line = next(line for line in text.splitlines() if line.startswith("schema revision:"))
    assert "none" in revision_line
    assert HEAD in revision_line
    assert "run `recorder migrate`" in revision_line

    status = status_json(tmp_path, env=env)
    assert status["schema_revision"] is None
    assert status["schema_current"] is False
    assert status["log_head"] is None
    # status only looks
    assert current_revision(empty_database.dsn) is None


def test_database_url_flag_beats_the_environment(
    tmp_path: Path, database: DatabaseTarget
) -> None:
    env = {"RECORDER_DATABASE_URL": UNREACHABLE_URL}

    assert recorder(tmp_path, "status", env=env).returncode != 0
    status = status_json(tmp_path, "--database-url", database.dsn, env=env)
    assert status["schema_current"] is True
    assert UNREACHABLE_URL not in json.dumps(status)


# -- against the embedded server -------------------------------------------------------------------


async def append_events(state_dir: Path, count: int) -> int:
    """Write `count` events through the real writer into the embedded server; return the head."""
    embedded = EmbeddedPostgres(state_dir)
    target = DatabaseTarget(dsn=await embedded.start(), embedded=True)
    try:
        writer = EventWriter(target)
        stop = asyncio.Event()
        task = asyncio.create_task(writer.run(stop))
        await asyncio.sleep(0)  # let the writer start before offering it events
        for sequence in range(count):
            await writer.put(message_event(f"conv-{uuid.uuid4().hex[:8]}", sequence))
        await writer.wait_for_head(count)
        stop.set()
        await task
        connection = await asyncpg.connect(target.dsn)
        try:
            return await assert_log_contiguous(connection)
        finally:
            await connection.close()
    finally:
        await embedded.stop()


@pytest.mark.slow
def test_embedded_migrate_status_and_data_kept_across_restarts(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    data_dir = state_dir / "postgres"
    env = {"RECORDER_STATE_DIR": str(state_dir)}

    before = status_json(tmp_path, env=env)
    assert before["embedded"] is True
    assert before["schema_current"] is False
    assert (data_dir / "PG_VERSION").is_file()

    assert_migrated_now(recorder(tmp_path, "migrate", env=env))
    # the server stopped with the process: the next command starts it again from disk
    assert not (data_dir / "postmaster.pid").exists()
    assert_already_current(recorder(tmp_path, "migrate", env=env))

    assert asyncio.run(append_events(state_dir, 3)) == 3
    assert not (data_dir / "postmaster.pid").exists()

    # --state-dir instead of the environment; cwd's default ./var would be a fresh, empty server
    after = status_json(tmp_path, "--state-dir", str(state_dir))
    assert after["embedded"] is True
    assert after["schema_revision"] == HEAD
    assert after["schema_current"] is True
    assert after["log_head"] == 3
    assert "embedded PostgreSQL" in str(after["database"])
    assert not (tmp_path / "var").exists()

    text = ok(recorder(tmp_path, "status", env=env)).stdout
    assert "log head:        3" in text.splitlines()


# -- secrets ---------------------------------------------------------------------------------------


def url_with_password(dsn: str, password: str, placement: str) -> tuple[str, str]:
    """`dsn` carrying a password; returns (url, password). A real password in `dsn` is kept.

    The test servers use trust authentication, so an invented password is accepted and ignored.
    """
    parts = urlsplit(dsn)
    password = parts.password or password
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or "postgres"
    if placement == "userinfo":
        return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}")), password
    query = "&".join(filter(None, [parts.query, urlencode({"password": password})]))
    return urlunsplit(parts._replace(netloc=f"{user}@{host}", query=query)), password


@pytest.mark.parametrize(
    "placement",
    [
        "userinfo",
        "query",
    ],
)
def test_database_password_never_printed(
    tmp_path: Path, empty_database: DatabaseTarget, placement: str
) -> None:
    url, password = url_with_password(empty_database.dsn, f"pw-{uuid.uuid4().hex}", placement)
    env = {"RECORDER_DATABASE_URL": url, "RECORDER_LOG_LEVEL": "debug"}

    runs = [
        recorder(tmp_path, "status", env=env),
        recorder(tmp_path, "migrate", env=env),
        recorder(tmp_path, "migrate", env=env),
        recorder(tmp_path, "status", env=env),
        recorder(tmp_path, "status", "--json", env=env),
        recorder(tmp_path, "--database-url", url, "status", env={"RECORDER_LOG_FORMAT": "json"}),
    ]

    for result in runs:
        ok(result)  # the password was accepted: these runs really used the URL
        assert password not in result.stdout
        assert password not in result.stderr
    assert current_revision(empty_database.dsn) == HEAD
    if placement == "userinfo":
        assert "***" in runs[-1].stdout  # the masked form is shown instead


# -- bad configuration and usage -------------------------------------------------------------------


BAD_TOML = {
    "unknown-toml-key": b'colour = "blue"\n',
    "bad-queue-size-toml": b"queue_size = 0\n",
    "not-utf8-config": 'account = "caf\u00e9"\n'.encode("latin-1"),
}


@pytest.mark.parametrize(
    ("case", "setting"),
    [
        ("log-format-env", "RECORDER_LOG_FORMAT"),
        ("missing-config-flag", "RECORDER_CONFIG"),
        ("missing-config-env", "RECORDER_CONFIG"),
        ("unknown-toml-key", "colour"),
        ("bad-queue-size-toml", "queue_size"),
        ("not-utf8-config", "RECORDER_CONFIG"),
        ("batch-wait-out-of-range", "RECORDER_WRITER_BATCH_WAIT_MS"),
    ],
)
def test_bad_configuration_exits_2_naming_the_setting(
    tmp_path: Path, case: str, setting: str
) -> None:
    # if the configuration were accepted the command would fail on the database, not exit 2
    env = {"RECORDER_DATABASE_URL": UNREACHABLE_URL}
    args: list[str] = []
    missing = tmp_path / "absent.toml"
    if case == "log-format-env":
        env["RECORDER_LOG_FORMAT"] = "bogus"
    elif case == "missing-config-flag":
        args = ["--config", str(missing)]
    elif case == "missing-config-env":
        env["RECORDER_CONFIG"] = str(missing)
    elif case == "batch-wait-out-of-range":
        env["RECORDER_WRITER_BATCH_WAIT_MS"] = "60000"
    else:
        config = tmp_path / "recorder.toml"
        config.write_bytes(BAD_TOML[case])
        args = ["--config", str(config)]

    for command in ("status", "migrate"):
        result = recorder(tmp_path, *args, command, env=env)
        assert result.returncode == 2, result.stderr
        assert setting in result.stderr
        assert "Traceback" not in result.stderr
        assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--help"], ["usage: recorder", "migrate", "status", "--database-url", "--state-dir"]),
        (["migrate", "--help"], ["usage: recorder migrate"]),
        (["status", "--help"], ["usage: recorder status", "--json"]),
    ],
    ids=["recorder", "migrate", "status"],
)
def test_help_exits_0(tmp_path: Path, args: list[str], expected: list[str]) -> None:
    result = ok(recorder(tmp_path, *args))

    for text in expected:
        assert text in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["frobnicate"], "frobnicate"),
        ([], "COMMAND"),
        (["--log-format", "bogus", "status"], "--log-format"),
        (["status", "--bogus-flag"], "--bogus-flag"),
    ],
    ids=["unknown-command", "no-command", "bad-flag-choice", "unknown-flag"],
)
def test_bad_usage_exits_2(tmp_path: Path, args: list[str], expected: str) -> None:
    result = recorder(tmp_path, *args, env={"RECORDER_DATABASE_URL": UNREACHABLE_URL})

    assert result.returncode == 2
    assert expected in result.stderr
    assert "usage: recorder" in result.stderr
    assert result.stdout == ""


# -- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "migrate"])
def test_unreachable_database_exits_1_without_traceback(tmp_path: Path, command: str) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    url = f"postgresql://postgres:{password}@127.0.0.1:1/nope"

    result = recorder(tmp_path, command, env={"RECORDER_DATABASE_URL": url})

    assert result.returncode == 1
    assert "cannot connect" in result.stderr
    assert "Traceback" not in result.stderr
    assert password not in result.stderr + result.stdout
    assert result.stdout == ""


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs: even root cannot write there (permission bits would not stop root)."""
    mount_point = tmp_path / "read-only"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(mount_point)],
        capture_output=True, text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.parametrize("problem", ["a-file", "under-a-file", "read-only", "read-only-child"])
def test_unusable_state_dir_exits_2_naming_the_setting(
    tmp_path: Path, problem: str, request: pytest.FixtureRequest
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    state_dir = {
        "a-file": lambda: blocker,
        "under-a-file": lambda: blocker / "var",
        "read-only": lambda: request.getfixturevalue("read_only_dir"),
        "read-only-child": lambda: request.getfixturevalue("read_only_dir") / "var",
    }[problem]()

    for command in ("status", "migrate"):
        result = recorder(tmp_path, command, env={"RECORDER_STATE_DIR": str(state_dir)})

        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("recorder: RECORDER_STATE_DIR: "), result.stderr
        assert str(state_dir) in result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stdout == ""


def test_libpq_style_url_parameters_work(tmp_path: Path, empty_database: DatabaseTarget) -> None:
    separator = "&" if "?" in empty_database.dsn else "?"
    url = f"{empty_database.dsn}{separator}sslmode=disable"
    env = {"RECORDER_DATABASE_URL": url}
    ok(recorder(tmp_path, "migrate", env=env))
    assert status_json(tmp_path, env=env)["schema_revision"] == HEAD


def test_a_database_error_after_connecting_is_reported_without_traceback(
    tmp_path: Path, database: DatabaseTarget
) -> None:
    # A schema at an unknown revision: alembic cannot upgrade it.
    import asyncio

    import asyncpg

    async def corrupt() -> None:
        connection = await asyncpg.connect(database.dsn)
        try:
            await connection.execute("UPDATE alembic_version SET version_num = 'nonexistent'")
        finally:
            await connection.close()

    asyncio.run(corrupt())
    result = recorder(tmp_path, "migrate", env={"RECORDER_DATABASE_URL": database.dsn})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "recorder:" in result.stderr
