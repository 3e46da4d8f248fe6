"""`recorder export`, `[[exports]]` settings, and scheduled exports inside `recorder run`.

The command runs in process (`recorder.cli.main`, output captured) and once as a real
process; configuration errors name the setting; a daemon with a one-second job writes
files that hold the log exactly once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recorder.cli import main
from recorder.config import load_settings
from recorder.db.target import DatabaseTarget
from recorder.errors import ConfigError
from recorder.exports.columns import EVENTS
from recorder.exports.files import MANIFEST_SUFFIX
from recorder.exports.jobs import ExportJob
from recorder.simulator import Simulator
from tests.exports.readback import read_rows, sha256
from tests.faults.harness import (
    ACCOUNT,
    head_reaches,
    poll,
    running_daemon,
    settings_for,
    static_identities,
)
from tests.helpers import message_event
from tests.projection_helpers import append

UNREACHABLE_URL = "postgresql://postgres@127.0.0.1:1/nope"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No RECORDER_* setting or option mirror from the outside (conftest restores logging)."""
    for key in list(os.environ):
        if (key.startswith("RECORDER_") and not key.startswith("RECORDER_TEST_")) or key in (
                "STATE_DIRECTORY", "JOURNAL_STREAM"):
            monkeypatch.delenv(key)
    yield


def export(*args: str, database: DatabaseTarget | None = None,
           config: Path | None = None) -> int:
    argv = ["--log-level", "warning"]
    if database is not None:
        argv += ["--database-url", database.dsn]
    if config is not None:
        argv += ["--config", str(config)]
    return main([*argv, "export", *args])


def add_events(database: DatabaseTarget, first: int, last: int) -> None:
    asyncio.run(append(database, [message_event("conv-1", n) for n in range(first, last + 1)]))


def write_config(tmp_path: Path, text: str, **values: str) -> Path:
    lines = [f"{key} = {orjson.dumps(value).decode()}" for key, value in values.items()]
    path = tmp_path / "recorder.toml"
    path.write_text("\n".join(lines) + "\n" + text, encoding="utf-8")
    return path


def positions_in(path: Path, fmt: str, compression: str) -> list[int]:
    return [row["position"] for row in read_rows(path, fmt, compression, EVENTS)]


# -- ad hoc -------------------------------------------------------------------------------------


def test_adhoc_export_prints_the_manifest(
    tmp_path: Path, database: DatabaseTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    add_events(database, 0, 4)

    assert export("--out", str(tmp_path / "all.parquet"), database=database) == 0
    captured = capsys.readouterr()
    manifest = orjson.loads(captured.out)
    path = tmp_path / "all.parquet"
    assert (manifest["kind"], manifest["format"], manifest["compression"]) == (
        "events", "parquet", "zstd")
    assert (manifest["rows"], manifest["from_position"], manifest["to_position"]) == (5, 0, 5)
    assert manifest["sha256"] == sha256(path) and manifest["bytes"] == path.stat().st_size
    assert orjson.loads((tmp_path / f"all.parquet{MANIFEST_SUFFIX}").read_bytes()) == manifest
    assert pq.read_table(path).column("position").to_pylist() == [1, 2, 3, 4, 5]

    # The format and codec follow the file's suffix; options narrow the window.
    out = tmp_path / "some.csv.gz"
    assert export("--out", str(out), "--since", "1", "--until", "3", database=database) == 0
    manifest = orjson.loads(capsys.readouterr().out)
    assert (manifest["format"], manifest["compression"]) == ("csv", "gzip")
    assert positions_in(out, "csv", "gzip") == [2, 3]

    # An explicit codec that agrees with the suffix; the format is the suffix before it.
    # (One that contradicts it is refused: tests/exports/test_errors.py.)
    out = tmp_path / "named.csv.zst"
    assert export("--out", str(out), "--compression", "zstd", "--since", "4",
                  database=database) == 0
    manifest = orjson.loads(capsys.readouterr().out)
    assert (manifest["format"], manifest["compression"]) == ("csv", "zstd")
    assert positions_in(out, "csv", "zstd") == [5]

    # `--out -`: the data on stdout, the manifest on stderr.
    assert export("--format", "csv", "--out", "-", "--until", "2", database=database) == 0
    captured = capsys.readouterr()
    manifest = orjson.loads(captured.err)
    assert manifest["file"] == "-" and manifest["rows"] == 2
    data = tmp_path / "stdout.csv"
    data.write_bytes(captured.out.encode())
    assert positions_in(data, "csv", "none") == [1, 2]
    assert manifest["sha256"] == sha256(data)


def test_named_job_continues_its_checkpoint(
    tmp_path: Path, database: DatabaseTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path,
        '[[exports]]\nname = "ev"\nschedule = "1h"\nkind = "events"\nformat = "jsonl"\n',
        database_url=database.dsn, state_dir=str(tmp_path / "state"),
    )
    directory = tmp_path / "state" / "exports" / "ev"  # the default, under the state dir
    add_events(database, 0, 2)

    assert export("ev", config=config) == 0
    first = orjson.loads(capsys.readouterr().out)
    assert (first["job"], first["from_position"], first["to_position"]) == ("ev", 0, 3)
    assert first["file"] == "ev-000000000001-000000000003.jsonl.gz"  # gzip by default

    add_events(database, 3, 4)
    assert export("ev", config=config) == 0
    second = orjson.loads(capsys.readouterr().out)
    assert (second["from_position"], second["to_position"], second["rows"]) == (3, 5, 2)

    assert export("ev", config=config) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "export ev: nothing new since the last run" in captured.err

    files = sorted(directory.glob("ev-*.jsonl.gz"))
    assert [p.name for p in files] == [first["file"], second["file"]]
    for path, manifest in zip(files, (first, second), strict=True):
        assert manifest["sha256"] == sha256(path)
        beside = directory / path.name.replace(".jsonl.gz", MANIFEST_SUFFIX)
        assert orjson.loads(beside.read_bytes()) == manifest
    assert [p for f in files for p in positions_in(f, "jsonl", "gzip")] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(("args", "setting", "says"), [
    (["nope"], "NAME", "no export job named 'nope' (ev)"),
    (["ev", "--out", "x.jsonl"], "--out", "is for ad hoc exports"),
    (["ev", "--kind", "conversations"], "--kind", "is for ad hoc exports"),
    (["ev", "--until", "5"], "--until", "is for ad hoc exports"),
    ([], "--out", "is required"),
    (["--kind", "conversations"], "--out", "is required"),
    (["--format", "parquet", "--out", "-"], "--out", "standard output"),
    (["--out", "-", "--kind", "transcripts"], "--out", "standard output"),
    (["--since", "yesterday", "--out", "x.jsonl"], "--since", "'yesterday'"),
    (["--until", "2026-13-01", "--out", "x.jsonl"], "--until", "ISO 8601"),
    (["--since", "-3", "--out", "x.jsonl"], "--since", "'-3'"),
    (["--compression", "snappy", "--out", "x.csv"], "--compression", "for csv"),
    (["--compression", "brotli", "--out", "x.parquet"], "--compression", "for parquet"),
])
def test_usage_errors_exit_2_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], setting: str,
    says: str,
) -> None:
    """Each is refused before any database is touched (this one does not exist)."""
    config = write_config(
        tmp_path,
        '[[exports]]\nname = "ev"\nschedule = "1h"\nkind = "events"\nformat = "jsonl"\n',
        database_url=UNREACHABLE_URL, state_dir=str(tmp_path / "state"),
    )
    assert export(*args, config=config) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"recorder: {setting}: "), captured.err
    assert says in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "state").exists() and not (tmp_path / "x.jsonl").exists()


def test_out_must_fit_the_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file for events and conversations, a directory for transcripts: said up front,
    not after a whole export has been written."""
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "a-file").write_text("")
    for args, says in (
        (["--out", str(tmp_path / "a-directory")], "is a directory"),
        (["--kind", "conversations", "--out", str(tmp_path / "a-directory")], "is a directory"),
        (["--kind", "transcripts", "--out", str(tmp_path / "a-file")], "is not a directory"),
    ):
        assert main(["--database-url", UNREACHABLE_URL, "export", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("recorder: --out: ") and says in err, err


def test_unknown_choices_are_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--kind", "messages"], ["--format", "xml"]):
        with pytest.raises(SystemExit) as exited:
            main(["export", *args, "--out", "x"])
        assert exited.value.code == 2
        assert f"argument {args[0]}: invalid choice" in capsys.readouterr().err


def test_export_as_a_real_process(tmp_path: Path, database: DatabaseTarget) -> None:
    add_events(database, 0, 9)
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith("RECORDER_") and key not in ("STATE_DIRECTORY",
                                                                  "JOURNAL_STREAM")}
    environ["RECORDER_DATABASE_URL"] = database.dsn
    result = subprocess.run(
        [sys.executable, "-m", "recorder", "export", "--out", "log.parquet"],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    manifest = orjson.loads(result.stdout)
    path = tmp_path / "log.parquet"
    assert manifest["file"] == "log.parquet" and manifest["rows"] == 10
    assert manifest["sha256"] == sha256(path)
    assert pq.read_table(path).column("position").to_pylist() == list(range(1, 11))
    assert (tmp_path / f"log.parquet{MANIFEST_SUFFIX}").exists()
    assert not (tmp_path / "var").exists(), "an external database: no embedded state"


# -- [[exports]] settings -----------------------------------------------------------------------

VALID = {"name": "ev", "schedule": "15m", "kind": "events", "format": "parquet"}


def exports_toml(*entries: dict[str, Any]) -> str:
    text = ""
    for entry in entries:
        text += "[[exports]]\n" + "".join(
            f"{key} = {toml(value)}\n" for key, value in entry.items())
    return text


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf"}.get(str(value), repr(value))
    return orjson.dumps(value).decode()


def load(tmp_path: Path, *entries: dict[str, Any], environ: dict[str, str] | None = None,
         head: str = "") -> tuple[ExportJob, ...]:
    path = tmp_path / "recorder.toml"
    path.write_text(head + exports_toml(*entries), encoding="utf-8")
    return load_settings(path, environ=environ or {}).exports


def refused(tmp_path: Path, *entries: dict[str, Any], head: str = "") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, *entries, head=head)
    return caught.value


def test_export_defaults_and_directories(tmp_path: Path) -> None:
    state = tmp_path / "state"
    jobs = load(
        tmp_path,
        VALID,
        {"name": "text.csv", "schedule": "every 6h", "kind": "Conversations", "format": "CSV"},
        {"name": "t-1", "schedule": "*/10 * * * *", "kind": "transcripts", "format": "jsonl",
         "directory": "out/transcripts", "compression": "zstd", "retention_days": 30},
        {"name": "abs", "schedule": "30s", "kind": "events", "format": "jsonl",
         "directory": str(tmp_path / "elsewhere"), "compression": "none",
         "retention_days": 0.5},
        head=f"state_dir = {toml(str(state))}\n",
    )
    assert [(j.name, j.kind, j.format, j.compression, j.suffix) for j in jobs] == [
        ("ev", "events", "parquet", "zstd", ".parquet"),
        ("text.csv", "conversations", "csv", "gzip", ".csv.gz"),
        ("t-1", "transcripts", "jsonl", "zstd", ".jsonl.zst"),
        ("abs", "events", "jsonl", "none", ".jsonl"),
    ]
    assert [j.directory for j in jobs] == [
        state / "exports" / "ev", state / "exports" / "text.csv", state / "out" / "transcripts",
        tmp_path / "elsewhere",
    ]
    assert [j.retention_days for j in jobs] == [None, None, 30.0, 0.5]
    assert [j.schedule for j in jobs] == ["15m", "every 6h", "*/10 * * * *", "30s"]
    for j in jobs:
        j.trigger()  # every schedule builds its trigger
    assert not state.exists(), "settings create no directory"

    # The state dir from the environment (which wins over the file) is the root too.
    [job] = load(tmp_path, VALID, environ={"RECORDER_STATE_DIR": str(tmp_path / "env")},
                 head=f"state_dir = {toml(str(state))}\n")
    assert job.directory == tmp_path / "env" / "exports" / "ev"
    assert load(tmp_path) == ()


@pytest.mark.parametrize(("entry", "setting", "says"), [
    ({"schedule": "15m", "kind": "events", "format": "csv"}, "exports[0].name", "required"),
    ({**VALID, "name": "has space"}, "exports[0].name", "letters, digits"),
    ({**VALID, "name": "../up"}, "exports[0].name", "letters, digits"),
    ({**VALID, "name": "x" * 65}, "exports[0].name", "1-64"),
    ({**VALID, "name": 7}, "exports[0].name", "got 7"),
    ({k: v for k, v in VALID.items() if k != "kind"}, "exports[0].kind", "required"),
    ({**VALID, "colums": "a"}, "exports[0].colums", "not a known setting"),
    ({**VALID, "schedule": "sometimes"}, "exports.ev.schedule", "five-field cron"),
    ({**VALID, "schedule": "0s"}, "exports.ev.schedule", "longer than 0"),
    ({**VALID, "schedule": "61 * * * *"}, "exports.ev.schedule", "not a valid cron"),
    ({**VALID, "schedule": "0 0 31 2 *"}, "exports.ev.schedule", "never fires"),
    ({**VALID, "schedule": "99999999999d"}, "exports.ev.schedule", "too long"),
    ({**VALID, "schedule": "4000000d"}, "exports.ev.schedule", "never fires"),
    ({**VALID, "schedule": 15}, "exports.ev.schedule", "must be a string"),
    ({**VALID, "kind": "messages"}, "exports.ev.kind", "events, conversations, transcripts"),
    ({**VALID, "format": "xml"}, "exports.ev.format", "jsonl, csv, parquet"),
    ({**VALID, "compression": "brotli"}, "exports.ev.compression", "snappy"),
    ({**VALID, "format": "csv", "compression": "snappy"}, "exports.ev.compression",
     "none, gzip, zstd"),
    ({**VALID, "format": "jsonl", "compression": "lz4"}, "exports.ev.compression", "lz4"),
    ({**VALID, "directory": ""}, "exports.ev.directory", "non-empty"),
    ({**VALID, "directory": 3}, "exports.ev.directory", "non-empty"),
    ({**VALID, "retention_days": 0}, "exports.ev.retention_days", "got 0"),
    ({**VALID, "retention_days": -1.5}, "exports.ev.retention_days", "got -1.5"),
    ({**VALID, "retention_days": "30"}, "exports.ev.retention_days", "got '30'"),
    ({**VALID, "retention_days": True}, "exports.ev.retention_days", "got True"),
    ({**VALID, "retention_days": float("nan")}, "exports.ev.retention_days", "got nan"),
    ({**VALID, "retention_days": float("inf")}, "exports.ev.retention_days", "got inf"),
    ({**VALID, "retention_days": 10_000_000}, "exports.ev.retention_days", "at most"),
])
def test_export_setting_errors_name_the_setting(
    tmp_path: Path, entry: dict[str, Any], setting: str, says: str
) -> None:
    error = refused(tmp_path, entry)
    assert error.setting == setting
    assert str(error).startswith(f"{setting}: ") and says in str(error), str(error)


def test_export_settings_as_a_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    error = refused(tmp_path, VALID, {**VALID, "schedule": "1h"})
    assert error.setting == "exports" and "'ev' repeats" in str(error)
    error = refused(tmp_path, VALID, {**VALID, "name": "second", "kind": "nope"})
    assert error.setting == "exports.second.kind"

    path = tmp_path / "recorder.toml"
    path.write_text('exports = "events"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.setting == "exports" and "[[exports]]" in str(caught.value)
    path.write_text("exports = [1]\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.setting == "exports[0]"

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    error = refused(tmp_path, {**VALID, "directory": str(a_file)})
    assert error.setting == "exports.ev.directory" and "not a directory" in str(error)

    # The command line says the same, exit 2, before anything runs.
    path.write_text(exports_toml({**VALID, "format": "xml"}))
    assert main(["--config", str(path), "export", "ev"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recorder: configuration error: exports.ev.format: "), err


# -- in the daemon --------------------------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


async def test_a_scheduled_job_exports_while_recording(
    tmp_path: Path, database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    directory = tmp_path / "state" / "exports" / "every-second"
    job = ExportJob("every-second", "1s", "events", "parquet", directory, "zstd")
    async with Simulator(account=ACCOUNT, seed=31) as sim:
        consumers = [sim.new_consumer()]
        settings = settings_for(sim, static_identities(sim, consumers), exports=(job,),
                                state_dir=tmp_path / "state")
        async with running_daemon(settings, database) as daemon:
            assert daemon.app.exports is not None
            rendered = daemon.app.metrics.render()[0].decode()
            assert metric(rendered, "recorder_export_rows_total", job=job.name) == 0
            traffic = sim.start_traffic(consumers, 2, rate=100, total_events=200)
            await poll(head_reaches(db, 20), "traffic never reached the log")

            def exported() -> bool:
                text = daemon.app.metrics.render()[0].decode()
                return (metric(text, "recorder_export_rows_total", job=job.name) or 0) > 0

            await poll(exported, "no export run finished while recording", within_s=20)
            assert daemon.running
            assert list(directory.glob(f"*{MANIFEST_SUFFIX}")), "a manifest while recording"
            await asyncio.wait_for(traffic, 30)
            assert await daemon.stop() == 0
            rendered = daemon.app.metrics.render()[0].decode()

    manifests = sorted(directory.glob(f"*{MANIFEST_SUFFIX}"))
    data = sorted(directory.glob("*.parquet"))
    assert data and len(data) == len(manifests), "every file has its manifest"
    assert not [p for p in directory.iterdir() if p.name.startswith(".")], "no temporary file"
    positions: list[int] = []
    low = 0
    for path in data:
        manifest = orjson.loads(
            (directory / path.name.replace(".parquet", MANIFEST_SUFFIX)).read_bytes())
        assert manifest["from_position"] == low, "windows follow each other"
        low = manifest["to_position"]
        assert manifest["sha256"] == sha256(path) and manifest["rows"] == pq.read_metadata(
            path).num_rows
        window = pq.read_table(path).column("position").to_pylist()
        assert window == list(range(manifest["from_position"] + 1, manifest["to_position"] + 1))
        positions += window
    k = len(positions)
    assert k >= 1 and positions == list(range(1, k + 1)), "positions 1..k, each once"
    assert k <= await db.fetchval("SELECT position FROM log_head")
    exported_rows = metric(rendered, "recorder_export_rows_total", job=job.name)
    assert exported_rows == k, "the counter counts every exported row"
    runs = await db.fetch("SELECT status, rows FROM export_runs WHERE job = $1 AND "
                          "status = 'done' ORDER BY id", job.name)
    assert sum(r["rows"] for r in runs) == k and len(runs) == len(data)
