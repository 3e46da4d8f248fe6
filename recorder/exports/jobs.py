"""Export jobs from TOML `[[exports]]`: what to export, how, where and when."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recorder.errors import ConfigError

if TYPE_CHECKING:
    from apscheduler.triggers.base import BaseTrigger

KINDS = ("events", "conversations", "transcripts")
FORMATS = ("jsonl", "csv", "parquet")
#: Stream codecs for jsonl/csv (by file suffix) and Parquet's own column codecs.
TEXT_COMPRESSIONS = {"none": "", "gzip": ".gz", "zstd": ".zst"}
PARQUET_COMPRESSIONS = ("none", "snappy", "gzip", "zstd", "lz4")
DEFAULT_COMPRESSION = {"jsonl": "gzip", "csv": "gzip", "parquet": "zstd"}
KEYS = {"name", "schedule", "kind", "format", "directory", "compression", "retention_days"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_INTERVAL = re.compile(r"(?:every\s+)?(\d+)\s*(s|m|h|d)", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Interval schedules count from this instant, so every instance fires at the same times
#: and shares each run's slot (`scheduled_for`): a slot one instance ran is skipped by others.
INTERVAL_ORIGIN = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
#: Longer retention is "forever" anyway, and its cutoff would fall before the year 1.
MAX_RETENTION_DAYS = 365_000


@dataclasses.dataclass(frozen=True)
class ExportJob:
    name: str
    schedule: str
    kind: str
    format: str
    directory: Path
    compression: str
    retention_days: float | None = None

    def trigger(self) -> BaseTrigger:
        return parse_schedule(self.schedule, f"exports.{self.name}.schedule")

    @property
    def suffix(self) -> str:
        return file_suffix(self.format, self.compression)


def file_suffix(fmt: str, compression: str) -> str:
    """File name ending: `.jsonl.gz`, `.csv`, `.parquet`, … (Parquet compresses inside)."""
    if fmt == "parquet":
        return ".parquet"
    return f".{fmt}{TEXT_COMPRESSIONS[compression]}"


def parse_schedule(text: str, name: str) -> BaseTrigger:
    """`15m`, `every 6h`, `30s`, `1d` (an interval), or a five-field cron line (UTC)."""
    trigger = _trigger(text, name)
    try:
        first = trigger.get_next_fire_time(None, dt.datetime.now(dt.UTC))
    except (OverflowError, ValueError):  # an interval that ends after the year 9999
        first = None
    if first is None:
        raise ConfigError(name, f"never fires (no run before the year 10000): {text!r}")
    return trigger


def _trigger(text: str, name: str) -> BaseTrigger:
    # Imported here: APScheduler's triggers take ~55 ms to import, which every command paid
    # when config.py loaded them, though only configured exports need them.
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    match = _INTERVAL.fullmatch(text.strip())
    if match:
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        if seconds <= 0:
            raise ConfigError(name, "an interval must be longer than 0")
        try:
            return IntervalTrigger(seconds=seconds, start_date=INTERVAL_ORIGIN, timezone=dt.UTC)
        except (OverflowError, ValueError):
            raise ConfigError(name, f"is too long an interval: {text!r}") from None
    if len(text.split()) != 5:
        raise ConfigError(
            name, f"must be an interval such as '15m' or '6h', or a five-field cron line; "
            f"got {text!r}",
        )
    try:
        return CronTrigger.from_crontab(text, timezone=dt.UTC)
    except ValueError as exc:
        raise ConfigError(name, f"is not a valid cron line ({exc}): {text!r}") from exc


def _choice(value: Any, name: str, choices: tuple[str, ...] | dict[str, str]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}; got {value!r}")
    return value.lower()


def parse_exports(raw: Any, state_dir: Path) -> tuple[ExportJob, ...]:
    """The `[[exports]]` array; relative directories are under `state_dir`."""
    if not isinstance(raw, list):
        raise ConfigError("exports", "must be an array of tables ([[exports]])")
    jobs: list[ExportJob] = []
    for index, entry in enumerate(raw):
        where = f"exports[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(where, "must be a table")
        unknown = set(entry) - KEYS
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}", "is not a known setting")
        for key in ("name", "schedule", "kind", "format"):
            if key not in entry:
                raise ConfigError(f"{where}.{key}", "is required")
        name = entry["name"]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(
                f"{where}.name", "must be 1-64 letters, digits, '.', '_' or '-' "
                f"(it names files and the job's lock); got {name!r}",
            )
        where = f"exports.{name}"
        schedule = entry["schedule"]
        if not isinstance(schedule, str):
            raise ConfigError(f"{where}.schedule", "must be a string")
        parse_schedule(schedule, f"{where}.schedule")
        kind = _choice(entry["kind"], f"{where}.kind", KINDS)
        fmt = _choice(entry["format"], f"{where}.format", FORMATS)
        compressions = PARQUET_COMPRESSIONS if fmt == "parquet" else TEXT_COMPRESSIONS
        compression = _choice(
            entry.get("compression", DEFAULT_COMPRESSION[fmt]), f"{where}.compression",
            compressions,
        )
        directory_text = entry.get("directory", f"exports/{name}")
        if not isinstance(directory_text, str) or not directory_text.strip():
            raise ConfigError(f"{where}.directory", "must be a non-empty path")
        directory = Path(directory_text).expanduser()
        if not directory.is_absolute():
            directory = state_dir / directory
        if directory.exists() and not directory.is_dir():
            raise ConfigError(f"{where}.directory", f"{str(directory)!r} is not a directory")
        retention = entry.get("retention_days")
        if retention is not None and (
            isinstance(retention, bool) or not isinstance(retention, int | float)
            or not 0 < retention <= MAX_RETENTION_DAYS  # also refuses nan; inf is too large
        ):
            raise ConfigError(
                f"{where}.retention_days",
                f"must be a number > 0 and at most {MAX_RETENTION_DAYS}; got {retention!r}",
            )
        jobs.append(ExportJob(name, schedule, kind, fmt, directory, compression,
                              None if retention is None else float(retention)))
    names = [job.name for job in jobs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError("exports", f"names must be unique; {repeated[0]!r} repeats")
    return tuple(jobs)
