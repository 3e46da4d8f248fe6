"""`recorder export`: run a configured job now, or export ad hoc, and print the manifest.

Bad arguments are ConfigErrors naming the option (exit 2), raised before the database is
touched; a failed write is an ExportError saying what was kept (exit 1).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import stat
import sys
from pathlib import Path
from typing import Any

import orjson

from recorder.config import Settings
from recorder.db import migrate
from recorder.db.target import open_database
from recorder.errors import ConfigError
from recorder.exports.files import MANIFEST_SUFFIX
from recorder.exports.jobs import (
    FORMATS,
    KINDS,
    PARQUET_COMPRESSIONS,
    TEXT_COMPRESSIONS,
    ExportJob,
)
from recorder.exports.runner import Exporter, ExportError, silence_stdout
from recorder.progress import ProgressBar

_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
                   ".parquet": "parquet"}
_SUFFIX_COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
_AD_HOC_OPTIONS = ("kind", "format", "compression", "since", "until", "out")
#: Positions are PostgreSQL bigints, 0 (before the first event) and up.
_POSITION = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() takes '²', which int() refuses
_NEGATIVE = re.compile(r"-[0-9]+")
MAX_POSITION = 2**63 - 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME",
                        help="a job from [[exports]] to run now (continues its checkpoint)")
    parser.add_argument("--kind", choices=KINDS, help="ad hoc: what to export (default events)")
    parser.add_argument("--format", choices=FORMATS,
                        help="ad hoc: file format (default: from --out's suffix, else jsonl)")
    parser.add_argument("--compression",
                        help="ad hoc: none, gzip or zstd (parquet also snappy, lz4); "
                             "default: from --out's suffix, zstd for parquet")
    parser.add_argument("--since", metavar="POSITION|TIME",
                        help="ad hoc: after this position, or from this ISO time on (events: "
                             "received_at; conversations: updated_at; transcripts: end_ts)")
    parser.add_argument("--until", metavar="POSITION|TIME",
                        help="ad hoc: up to this position (inclusive), or before this ISO time")
    parser.add_argument("--out", metavar="PATH",
                        help="ad hoc: the file to write (- for standard output, jsonl and csv "
                             "only); for transcripts, a directory")


def parse_bound(text: str | None, name: str) -> int | dt.datetime | None:
    """A position (digits) or an ISO 8601 date/time (UTC unless it says otherwise).

    Refused (ConfigError naming `name`): a position past bigint, and a time outside the years
    1-9999 once in UTC, which the driver converts it to (and Python's datetime cannot hold).
    """
    if text is None or text == "":
        return None
    text = text.strip()
    if _POSITION.fullmatch(text):
        position = int(text)
        if position > MAX_POSITION:
            raise ConfigError(name, f"position {text} is past the largest position, "
                              f"{MAX_POSITION}")
        return position
    if _NEGATIVE.fullmatch(text):
        raise ConfigError(name, f"a position is 0 or more; got {text!r}")
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(name, f"must be a position or an ISO 8601 time; got {text!r}") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    try:
        moment.astimezone(dt.UTC)
    except OverflowError:
        side = "before 0001-01-01" if moment.year == 1 else "after 9999-12-31"
        raise ConfigError(name, f"{text!r} is {side} in UTC; times must fall within the "
                          "years 1-9999 in UTC") from None
    return moment


def _format_and_compression(
    out: str, given_format: str | None, given_compression: str | None
) -> tuple[str, str]:
    """The format and codec from the options and --out's suffix, which must agree.

    `x.csv.gz` says csv and gzip; `x.csv` says csv, not compressed; a name without a known
    suffix says nothing. An option that contradicts the suffix is refused: which one was
    meant is not ours to guess, and a file named for one thing holding another misleads.
    """
    name = Path(out).name if out != "-" else ""
    suffixes = [suffix.lower() for suffix in Path(name).suffixes]
    codec_suffix = suffixes.pop() if suffixes and suffixes[-1] in _SUFFIX_COMPRESSIONS else ""
    format_suffix = suffixes[-1] if suffixes and suffixes[-1] in _SUFFIX_FORMATS else ""
    named_format = _SUFFIX_FORMATS.get(format_suffix)
    named_codec = _SUFFIX_COMPRESSIONS.get(codec_suffix)
    stem = name[:len(name) - len(codec_suffix) - len(format_suffix)]
    if given_format and named_format and given_format != named_format:
        # parquet takes no codec suffix (see below); jsonl and csv keep the one given
        codec_part = name[len(name) - len(codec_suffix):] if given_format != "parquet" else ""
        better = f"{stem}.{given_format}{codec_part}"
        raise ConfigError("--format", f"{given_format} contradicts the suffix of --out {out!r} "
                          f"({named_format}): name it {better}, or drop --format")
    fmt = given_format or named_format or "jsonl"
    if fmt == "parquet" and codec_suffix:
        raise ConfigError("--out", f"parquet compresses inside the file; name it "
                          f"{stem}.parquet and choose the codec with --compression "
                          f"(a {codec_suffix} suffix says the whole file is {named_codec})")
    allowed = PARQUET_COMPRESSIONS if fmt == "parquet" else tuple(TEXT_COMPRESSIONS)
    if given_compression is not None and given_compression not in allowed:
        raise ConfigError("--compression", f"must be one of {', '.join(allowed)} for {fmt}")
    # For jsonl and csv the suffix says the codec: `.gz`, `.zst`, or none after a format's.
    said = named_codec or ("none" if named_format else None)
    if fmt != "parquet" and given_compression and said and given_compression != said:
        better = name[:len(name) - len(codec_suffix)] + TEXT_COMPRESSIONS[given_compression]
        raise ConfigError("--compression", f"{given_compression} contradicts the suffix of "
                          f"--out {out!r} ({'not compressed' if said == 'none' else said}): "
                          f"name it {better}, or drop --compression")
    compression = given_compression or named_codec or ("zstd" if fmt == "parquet" else "none")
    return fmt, compression


def _ad_hoc(args: argparse.Namespace) -> tuple[str, str, str, Path]:
    if not args.out:
        raise ConfigError("--out", "is required for an ad hoc export (or give a job NAME)")
    kind = args.kind or "events"
    out = Path(args.out)
    fmt, compression = _format_and_compression(args.out, args.format, args.compression)
    if args.out == "-" and (fmt == "parquet" or kind == "transcripts"):
        raise ConfigError("--out", "- (standard output) takes jsonl or csv events or "
                          "conversations; parquet and transcripts need a path")
    mode = _mode(out) if args.out != "-" else None
    if mode is not None and kind != "transcripts":
        if stat.S_ISDIR(mode):
            raise ConfigError("--out", f"{args.out!r} is a directory; {kind} go to one file")
        if not stat.S_ISREG(mode):
            # The file is written beside and renamed over --out: that would replace a pipe
            # or a device (as root, /dev/null itself) with a plain file.
            raise ConfigError("--out", f"{args.out!r} is not a regular file (a pipe, device "
                              "or socket): an export writes a temporary file beside --out "
                              "and renames it into place; use - for standard output")
    if mode is not None and kind == "transcripts" and not stat.S_ISDIR(mode):
        raise ConfigError("--out", f"{args.out!r} is not a directory; transcripts are one "
                          "file per conversation, under a directory")
    return kind, fmt, compression, out


def _mode(path: Path) -> int | None:
    """The file type and mode --out has now; None if there is none to be seen. A path that
    cannot be looked at (too long, a directory we may not search) fails when written, which
    says so along with what was kept."""
    try:
        return path.stat().st_mode
    except OSError:
        return None


def _kept(job: ExportJob | None, out: Path | None, manifests: list[dict[str, Any]]) -> str:
    """What a finished export left, for when its manifest cannot be printed."""
    if job is not None:
        windows = f"{len(manifests)} window{'s' if len(manifests) != 1 else ''}"
        return (f"the files of {windows} and their manifests in {job.directory}; the "
                f"checkpoint moved to position {manifests[-1]['to_position']}")
    assert out is not None
    if str(out) == "-":
        return "the data on standard output"
    if manifests[0]["kind"] == "transcripts":
        return (f"{manifests[0]['conversations']} transcript files under {out} and their "
                f"manifest {out / ('transcripts' + MANIFEST_SUFFIX)}")
    return f"{out} and its manifest {out}{MANIFEST_SUFFIX}"


async def export_command(settings: Settings, args: argparse.Namespace) -> int:
    since = parse_bound(args.since, "--since")
    until = parse_bound(args.until, "--until")
    job: ExportJob | None = None
    if args.name:
        given = [f"--{o}" for o in _AD_HOC_OPTIONS if getattr(args, o) is not None]
        if given:
            raise ConfigError(given[0], "is for ad hoc exports; a job takes its settings from "
                              "[[exports]]")
        jobs = {j.name: j for j in settings.exports}
        if args.name not in jobs:
            known = ", ".join(sorted(jobs)) or "none configured"
            raise ConfigError("NAME", f"no export job named {args.name!r} ({known})")
        job = jobs[args.name]
        adhoc_out: Path | None = None
    else:
        kind, fmt, compression, out = _ad_hoc(args)
        adhoc_out = out
    bar = ProgressBar(sys.stderr, unit="rows") if sys.stderr.isatty() else None
    async with open_database(settings) as target:
        await migrate.require_current_schema(target)
        exporter = Exporter(target)
        try:
            if job is not None:
                manifests: list[dict[str, Any]] = await exporter.run_job(job, progress=bar)
            else:
                manifests = [await exporter.run_adhoc(
                    kind, fmt, compression, out, since=since, until=until,
                    progress=bar)]
        finally:
            if bar is not None:
                bar.finish()
    stream = sys.stderr if args.out == "-" else sys.stdout
    if job is not None and not manifests:
        print(f"export {job.name}: nothing new since the last run", file=sys.stderr)
        return 0
    try:
        for manifest in manifests:
            stream.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2).decode() + "\n")
        stream.flush()
    except OSError as exc:  # e.g. standard output on a full disk: the export itself is done
        if stream is sys.stdout:
            silence_stdout()
        raise ExportError(f"export written, but its manifest could not be printed: "
                          f"{exc.strerror or exc}; kept: {_kept(job, adhoc_out, manifests)}"
                          ) from exc
    return 0

