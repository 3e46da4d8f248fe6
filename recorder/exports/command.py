"""`recorder export`: run a configured job now, or export ad hoc, and print the manifest."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import orjson

from recorder import migrate
from recorder.config import Settings
from recorder.database import open_database
from recorder.errors import ConfigError
from recorder.exports.jobs import (
    FORMATS,
    KINDS,
    PARQUET_COMPRESSIONS,
    TEXT_COMPRESSIONS,
    ExportJob,
)
from recorder.exports.runner import Exporter
from recorder.progress import ProgressBar

_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
                   ".parquet": "parquet"}
_SUFFIX_COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
_AD_HOC_OPTIONS = ("kind", "format", "compression", "since", "until", "out")


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
    """A position (digits) or an ISO 8601 date/time (UTC unless it says otherwise)."""
    if text is None or text == "":
        return None
    if text.strip().isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(name, f"must be a position or an ISO 8601 time; got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _ad_hoc(args: argparse.Namespace) -> tuple[str, str, str, Path]:
    if not args.out:
        raise ConfigError("--out", "is required for an ad hoc export (or give a job NAME)")
    kind = args.kind or "events"
    out = Path(args.out)
    suffixes = [s.lower() for s in out.suffixes]
    compression = args.compression
    if suffixes and suffixes[-1] in _SUFFIX_COMPRESSIONS:  # the format is the suffix before
        from_suffix = _SUFFIX_COMPRESSIONS[suffixes.pop()]
        compression = from_suffix if compression is None else compression
    fmt = args.format or (_SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None) or "jsonl"
    if compression is None:
        compression = "zstd" if fmt == "parquet" else "none"
    allowed = PARQUET_COMPRESSIONS if fmt == "parquet" else tuple(TEXT_COMPRESSIONS)
    if compression not in allowed:
        raise ConfigError("--compression", f"must be one of {', '.join(allowed)} for {fmt}")
    if args.out == "-" and (fmt == "parquet" or kind == "transcripts"):
        raise ConfigError("--out", "- (standard output) takes jsonl or csv events or "
                          "conversations; parquet and transcripts need a path")
    if args.out != "-" and kind != "transcripts" and out.is_dir():
        raise ConfigError("--out", f"{args.out!r} is a directory; {kind} go to one file")
    if kind == "transcripts" and out.exists() and not out.is_dir():
        raise ConfigError("--out", f"{args.out!r} is not a directory; transcripts are one "
                          "file per conversation, under a directory")
    return kind, fmt, compression, out


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
    else:
        kind, fmt, compression, out = _ad_hoc(args)
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
    for manifest in manifests:
        stream.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2).decode() + "\n")
    stream.flush()
    return 0

