"""Files on disk: written under a temporary name, fsynced, renamed into place atomically.

A reader that lists a directory sees a data file either whole or not at all; the manifest
beside it (written the same way, after the file) says what the file covers. Retention only
removes what a manifest covers, so a file being written, or one never checkpointed, is kept.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from recorder.exports.columns import Columns
from recorder.exports.writers import HashingFile, TableWriter, open_writer

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
_TRANSCRIPT_DAY = re.compile(r"\d{4}-\d{2}-\d{2}|undated")
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


def temp_path(final: Path) -> Path:
    return final.with_name(f"{TEMP_PREFIX}{final.name}{TEMP_SUFFIX}")


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class FileResult:
    def __init__(self, path: Path, rows: int, size: int, sha256: str) -> None:
        self.path, self.rows, self.size, self.sha256 = path, rows, size, sha256


class AtomicFile:
    """One data file: open a writer on a temporary file, then `publish` it under its name.

    Used from a worker thread. `discard` removes the temporary file (after a failure).
    """

    def __init__(self, final: Path, fmt: str, columns: Columns, compression: str) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        self.final = final
        self.temp = temp_path(final)
        self._raw = self.temp.open("wb")
        self._file = HashingFile(self._raw)
        self.writer: TableWriter = open_writer(fmt, self._file, columns, compression)

    def publish(self, before_rename: Callable[[], None] | None = None) -> FileResult:
        self.writer.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        if before_rename is not None:
            before_rename()
        os.replace(self.temp, self.final)
        fsync_directory(self.final.parent)
        return FileResult(self.final, self.writer.rows, self._file.size,
                          self._file.sha256.hexdigest())

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()  # now, not in its finalizer, after the file below is closed
        with contextlib.suppress(Exception):
            self._raw.close()
        with contextlib.suppress(FileNotFoundError):
            self.temp.unlink()


def write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    temp = temp_path(path)
    with temp.open("wb") as handle:
        handle.write(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    fsync_directory(path.parent)


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        document = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return document if isinstance(document, dict) else None


def remove_quietly(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def manifest_files(manifest_path: Path, manifest: dict[str, Any]) -> Iterator[Path]:
    """The data files a manifest covers (one for a window file, many for transcripts)."""
    if isinstance(manifest.get("file"), str):
        yield manifest_path.parent / manifest["file"]
    for entry in manifest.get("files") or ():
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            yield manifest_path.parent / entry["path"]


def apply_retention(directory: Path, job: str, days: float, now: dt.datetime) -> list[Path]:
    """Delete this job's files whose manifest is older than `days` (and the manifests).

    A file younger than the cutoff stays even if an old manifest lists it: a transcript
    rewritten by a later run is covered by that run's manifest; a window's file (which no
    other manifest covers) keeps its manifest too.
    """
    cutoff = now - dt.timedelta(days=days)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for manifest_path in sorted(directory.glob(f"{job}-*{MANIFEST_SUFFIX}")):
        manifest = read_manifest(manifest_path)
        if manifest is None or manifest.get("job") != job:
            continue
        try:
            created = dt.datetime.fromisoformat(str(manifest["created_at"]))
        except (KeyError, ValueError):
            continue
        if created >= cutoff:
            continue
        kept = False
        for path in manifest_files(manifest_path, manifest):
            try:
                modified = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
            except FileNotFoundError:
                continue
            if modified < cutoff:
                path.unlink()
                removed.append(path)
            else:
                kept = True
        if kept and isinstance(manifest.get("file"), str):
            continue  # a window's file stays, so does the one manifest that describes it
        manifest_path.unlink()
        removed.append(manifest_path)
    for day in sorted(directory.iterdir()):
        if day.is_dir() and _TRANSCRIPT_DAY.fullmatch(day.name):
            with contextlib.suppress(OSError):
                day.rmdir()  # a transcripts day emptied by retention; only succeeds when empty
    if removed:
        fsync_directory(directory)
    return removed
