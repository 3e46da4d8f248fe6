"""`recorder export` failures: one `recorder: …` line that says what failed and what was kept.

Real failures only: a full disk is a small tmpfs (or /dev/full as standard output), an
unwritable directory a read-only bind mount, a path under /proc or below a regular file.
I/O errors exit 1, bad arguments (suffixes that contradict --format or --compression, bounds
PostgreSQL cannot take) exit 2 before any database is touched.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from recorder.db.target import DatabaseTarget
from recorder.exports.files import MANIFEST_SUFFIX
from recorder.exports.jobs import ExportJob
from recorder.exports.runner import Exporter, ExportError
from tests.exports.test_command import (  # noqa: F401  (clean_environment is an autouse fixture)
    UNREACHABLE_URL,
    add_events,
    clean_environment,
    export,
    positions_in,
    write_config,
)
from tests.projection_helpers import append_changes, content, project, upsert

ROOT = Path(__file__).resolve().parents[2]
#: No server listens here: a test that reaches the database fails.
NOWHERE = DatabaseTarget(dsn=UNREACHABLE_URL, embedded=False)


# -- real failing file systems -------------------------------------------------------------------


def _mount(directory: Path, *commands: list[str]) -> None:
    """Run mount commands, or skip the test saying why (mounting needs root)."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            subprocess.run(["umount", str(directory)], capture_output=True, check=False)
            pytest.skip(f"cannot mount here ({' '.join(command[:3])}): {result.stderr.strip()}")


def _unmount(directory: Path) -> None:
    if subprocess.run(["umount", str(directory)], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: what a full disk looks like to the exporter (ENOSPC)."""
    directory = tmp_path / "small-disk"
    directory.mkdir()
    _mount(directory, ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(directory)])
    try:
        yield directory
    finally:
        _unmount(directory)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A directory bind-mounted read-only over itself: root cannot write there either (EROFS)."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    (directory / "existing").mkdir()
    _mount(directory, ["mount", "--bind", str(directory), str(directory)],
           ["mount", "-o", "remount,bind,ro", str(directory)])
    try:
        yield directory
    finally:
        _unmount(directory)


def one_line(err: str) -> str:
    """The single `recorder: …` line of stderr (and that it is the only one)."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("recorder: "), err
    return lines[0]


def everything_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


async def runs(database: DatabaseTarget) -> list[tuple[str | None, str, int, int]]:
    connection = await asyncpg.connect(database.dsn)
    try:
        rows = await connection.fetch(
            "SELECT job, status, from_position, to_position FROM export_runs ORDER BY id")
    finally:
        await connection.close()
    return [(r["job"], r["status"], r["from_position"], r["to_position"]) for r in rows]


def job_config(tmp_path: Path, database: DatabaseTarget, directory: Path,
               kind: str = "events") -> Path:
    return write_config(
        tmp_path,
        f'[[exports]]\nname = "ev"\nschedule = "1h"\nkind = "{kind}"\nformat = "jsonl"\n'
        f'compression = "none"\ndirectory = "{directory}"\n',
        database_url=database.dsn, state_dir=str(tmp_path / "state"),
    )


# -- a full disk ---------------------------------------------------------------------------------


def test_adhoc_export_to_a_full_disk(
    small_disk: Path, database: DatabaseTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    add_events(database, 0, 399)  # ~200 KB of jsonl: more than the disk holds
    out = small_disk / "log.jsonl"

    assert export("--out", str(out), database=database) == 1

    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert line == (f"recorder: export failed: cannot write {out}: No space left on device; "
                    "nothing was kept: no data file, temporary file or manifest is left"), line
    assert captured.out == ""
    assert everything_under(small_disk) == [], "the temporary file was removed"
    assert asyncio.run(runs(database)) == [(None, "failed", 0, 400)]


def test_a_job_on_a_full_disk_keeps_its_checkpoint(
    tmp_path: Path, small_disk: Path, database: DatabaseTarget,
    capsys: pytest.CaptureFixture[str],
) -> None:
    directory = small_disk / "ev"
    config = job_config(tmp_path, database, directory)
    add_events(database, 0, 2)
    assert export("ev", config=config) == 0
    first = orjson.loads(capsys.readouterr().out)
    kept = sorted([first["file"], first["file"].replace(".jsonl", MANIFEST_SUFFIX)])
    add_events(database, 3, 402)

    assert export("ev", config=config) == 1

    line = one_line(capsys.readouterr().err)
    failed = directory / "ev-000000000004-000000000403.jsonl"
    assert line == (
        f"recorder: export ev failed: cannot write {failed}: No space left on device; "
        "nothing was kept: no data file, temporary file or manifest is left; the checkpoint "
        "stays at position 3, so the next run exports from there"), line
    assert everything_under(directory) == kept
    assert asyncio.run(runs(database))[-2:] == [("ev", "done", 0, 3), ("ev", "failed", 3, 403)]

    # What the message promised: with room again, the next run continues from position 3.
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    assert export("ev", config=config) == 0
    again = orjson.loads(capsys.readouterr().out)
    assert (again["from_position"], again["to_position"]) == (3, 403)
    assert positions_in(directory / again["file"], "jsonl", "none") == list(range(4, 404))


async def test_a_manifest_that_does_not_fit_takes_its_data_file_with_it(
    small_disk: Path, database: DatabaseTarget
) -> None:
    """The disk fills between the data file and its manifest: the run fails whole."""
    await asyncio.to_thread(add_events, database, 0, 9)
    directory = small_disk / "ev"
    filler = small_disk / "filler"

    def fill_the_disk(step: str) -> None:
        if step == "file-renamed":  # the data file is in place; its manifest comes next
            with filler.open("wb", buffering=0) as handle:  # unbuffered: close has no flush
                try:
                    while True:
                        handle.write(b"\0" * 4096)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC

    job = ExportJob("ev", "1h", "events", "jsonl", directory, "none")
    with pytest.raises(ExportError) as caught:
        await Exporter(database, step=fill_the_disk).run_job(job)

    manifest = directory / f"ev-000000000001-000000000010{MANIFEST_SUFFIX}"
    assert str(caught.value) == (
        f"export ev failed: cannot write {manifest}: No space left on device; nothing was "
        "kept: no data file, temporary file or manifest is left; the checkpoint stays at "
        "position 0, so the next run exports from there")
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.ENOSPC
    assert everything_under(directory) == [], "the data file went with its manifest"
    assert (await runs(database))[-1] == ("ev", "failed", 0, 10)


async def test_transcripts_written_before_a_full_disk_are_kept_and_counted(
    small_disk: Path, database: DatabaseTarget
) -> None:
    """Transcripts are rewritten in place, so those already written stay; the message counts
    them. A tmpfs gives each small file a 4 KiB page: some fit, then the disk is full."""
    changes = []
    for n in range(40):
        conversation = f"conv-{n:02d}"
        changes += [upsert(conversation, 1_700_000_000_000), content(conversation, 0)]
        changes.append(upsert(conversation, 1_700_000_001_000, state="CLOSE", stage="CLOSE",
                              dialog_state="CLOSE", endTs=1_700_000_100_000))
    await append_changes(database, changes)
    await project(database)
    directory = small_disk / "tr"
    job = ExportJob("tr", "1h", "transcripts", "jsonl", directory, "none")

    with pytest.raises(ExportError) as caught:
        await Exporter(database).run_job(job)

    files = [p for p in directory.rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.name.startswith(".")], "no temporary file"
    assert not [p for p in files if p.name.endswith(MANIFEST_SUFFIX)]
    message = str(caught.value)
    assert message.startswith(f"export tr failed: cannot write {directory}/"), message
    assert (f"No space left on device; {len(files)} transcript files written before the "
            f"failure were kept under {directory}, with no manifest; the checkpoint stays at "
            "position 0, so the next run exports from there") in message, message
    assert "\n" not in message


def test_adhoc_export_to_a_full_standard_output(
    tmp_path: Path, database: DatabaseTarget
) -> None:
    """`--out -` into /dev/full, as a real process: one line, no traceback, and no second
    complaint from Python flushing standard output on the way out."""
    add_events(database, 0, 99)
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith("RECORDER_") or key.startswith("RECORDER_TEST_")}
    environ["RECORDER_DATABASE_URL"] = database.dsn
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "recorder", "--log-level", "warning", "export",
             "--format", "csv", "--out", "-"],
            cwd=ROOT, env=environ, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
        )
    assert result.returncode == 1, result.stderr
    assert one_line(result.stderr) == (
        "recorder: export failed: cannot write to standard output: No space left on device; "
        "what reached standard output is incomplete and has no manifest")
    assert asyncio.run(runs(database)) == [(None, "failed", 0, 100)]

    # The file written, its manifest beside it, but the manifest cannot be printed.
    out = tmp_path / "log.csv"
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "recorder", "--log-level", "warning", "export", "--out",
             str(out)],
            cwd=ROOT, env=environ, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
        )
    assert result.returncode == 1, result.stderr
    assert one_line(result.stderr) == (
        "recorder: export written, but its manifest could not be printed: No space left on "
        f"device; kept: {out} and its manifest {out}{MANIFEST_SUFFIX}")
    assert positions_in(out, "csv", "none") == list(range(1, 101))
    assert orjson.loads(Path(f"{out}{MANIFEST_SUFFIX}").read_bytes())["rows"] == 100


# -- places that cannot be written ---------------------------------------------------------------


def test_unwritable_places(
    tmp_path: Path, read_only: Path, database: DatabaseTarget,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_events(database, 0, 4)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for out, says in (
        (read_only / "x.parquet", f"cannot write {read_only}/x.parquet: Read-only file system"),
        (read_only / "new" / "x.csv",
         f"cannot create directory {read_only}/new: Read-only file system"),
        (a_file / "x.jsonl", f"cannot write {a_file}/x.jsonl: Not a directory"),
        (a_file / "sub" / "x.jsonl", f"cannot create directory {a_file}/sub: Not a directory"),
        (Path("/proc/self/x.jsonl"), "cannot write /proc/self/x.jsonl: No such file or directory"),
        (Path("/proc/nonexistent/x.csv"),
         "cannot create directory /proc/nonexistent: No such file or directory"),
        # looking at --out up front fails too (stat: ENAMETOOLONG, as EACCES would for a
        # user who may not search a directory): said by the write, not a traceback
        (tmp_path / f"{'x' * 300}.csv", f"cannot write {tmp_path}/{'x' * 300}.csv: File name "
         "too long"),
        (tmp_path / f"{'x' * 300}" / "x.csv",
         f"cannot create directory {tmp_path}/{'x' * 300}: File name too long"),
    ):
        assert export("--out", str(out), database=database) == 1, out
        line = one_line(capsys.readouterr().err)
        assert line == (f"recorder: export failed: {says}; nothing was kept: no data file, "
                        "temporary file or manifest is left"), line
    assert everything_under(read_only) == ["existing"]
    assert a_file.read_text() == ""

    # A job whose directory cannot be made: its checkpoint has not moved.
    config = job_config(tmp_path, database, read_only / "exports")
    assert export("ev", config=config) == 1
    line = one_line(capsys.readouterr().err)
    assert line == (
        f"recorder: export ev failed: cannot create directory {read_only}/exports: Read-only "
        "file system; nothing was kept: no data file, temporary file or manifest is left; "
        "the checkpoint stays at position 0, so the next run exports from there"), line
    statuses = [status for _, status, _, _ in asyncio.run(runs(database))]
    assert statuses == ["failed"] * 9


def test_out_that_is_not_a_regular_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The export renames a temporary file over --out: over a pipe or a device (/dev/null,
    as root) that would replace it with a plain file. Refused up front instead."""
    fifo = tmp_path / "a-pipe.csv"
    os.mkfifo(fifo)
    assert export("--out", str(fifo), database=NOWHERE) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"recorder: --out: {str(fifo)!r} is not a regular file"), err
    assert "use - for standard output" in err
    assert stat.S_ISFIFO(fifo.stat().st_mode), "the pipe is still a pipe"
    assert everything_under(tmp_path) == ["a-pipe.csv"]


# -- bad arguments: exit 2, before the database ---------------------------------------------------


@pytest.mark.parametrize(("args", "setting", "says"), [
    # a suffix that contradicts --format or --compression
    (["--out", "x.csv.gz", "--compression", "zstd"], "--compression",
     "zstd contradicts the suffix of --out 'x.csv.gz' (gzip)"),
    (["--out", "x.jsonl.zst", "--compression", "gzip"], "--compression",
     "gzip contradicts the suffix of --out 'x.jsonl.zst' (zstd)"),
    (["--out", "x.gz", "--compression", "none"], "--compression",
     "none contradicts the suffix of --out 'x.gz' (gzip)"),
    (["--out", "x.csv", "--compression", "gzip"], "--compression",
     "gzip contradicts the suffix of --out 'x.csv' (not compressed): name it x.csv.gz"),
    (["--out", "x.parquet", "--format", "csv"], "--format",
     "csv contradicts the suffix of --out 'x.parquet' (parquet)"),
    (["--out", "x.csv.gz", "--format", "jsonl"], "--format",
     "jsonl contradicts the suffix of --out 'x.csv.gz' (csv)"),
    (["--out", "x.jsonl", "--format", "parquet"], "--format",
     "parquet contradicts the suffix of --out 'x.jsonl' (jsonl)"),
    (["--out", "x.parquet.gz"], "--out",
     "parquet compresses inside the file; name it x.parquet"),
    (["--format", "parquet", "--out", "x.zst"], "--out",
     "parquet compresses inside the file; name it x.parquet"),
    # bounds PostgreSQL (or the conversion on the way to it) cannot take
    (["--out", "x.jsonl", "--until", "0001-01-01T00:00:00+14:00"], "--until",
     "before 0001-01-01 in UTC"),
    (["--out", "x.jsonl", "--since", "9999-12-31T23:59:59-14:00"], "--since",
     "after 9999-12-31 in UTC"),
    (["--out", "x.jsonl", "--since", "9223372036854775808"], "--since",
     "9223372036854775808 is past the largest position, 9223372036854775807"),
    (["--out", "x.jsonl", "--until", "99999999999999999999999"], "--until",
     "past the largest position"),
    (["--out", "x.jsonl", "--since", "²"], "--since", "must be a position or an ISO 8601"),
    (["--out", "x.jsonl", "--since", "-3"], "--since", "a position is 0 or more; got '-3'"),
])
def test_bad_arguments_exit_2_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    args: list[str], setting: str, says: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert export(*args, database=NOWHERE) == 2
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert line.startswith(f"recorder: {setting}: "), line
    assert says in line, line
    assert captured.out == "" and everything_under(tmp_path) == []


def test_what_agrees_with_the_suffix_or_has_none_still_exports(
    tmp_path: Path, database: DatabaseTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    add_events(database, 0, 2)
    for args, fmt, compression in (
        (["--out", "plain", "--format", "csv", "--compression", "zstd"], "csv", "zstd"),
        (["--out", "x.data", "--compression", "gzip"], "jsonl", "gzip"),
        (["--out", "x.csv.gz", "--compression", "gzip", "--format", "csv"], "csv", "gzip"),
        (["--out", "x.gz", "--format", "csv"], "csv", "gzip"),
        (["--out", "x.parquet", "--compression", "gzip"], "parquet", "gzip"),
        (["--out", "x.json", "--format", "jsonl"], "jsonl", "none"),
    ):
        out = tmp_path / args[1]
        assert export(*[str(out) if a == args[1] else a for a in args],
                      database=database) == 0, capsys.readouterr().err
        manifest = orjson.loads(capsys.readouterr().out)
        assert (manifest["format"], manifest["compression"]) == (fmt, compression)
    # Those bounds PostgreSQL takes are taken, at both ends of what Python can say.
    for since, until in (("0001-01-01", "9999-12-31T23:59:59.999999"),
                         ("0", "9223372036854775807")):
        out = tmp_path / "edges.jsonl"
        assert export("--out", str(out), "--since", since, "--until", until,
                      database=database) == 0, capsys.readouterr().err
        assert orjson.loads(capsys.readouterr().out)["rows"] == 3
    # ...and a time that overflows only as UTC is refused, not cut short (exit 2).
    assert export("--out", str(out), "--until", "9999-12-31T23:59:59-00:01",
                  database=database) == 2
