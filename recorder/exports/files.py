"""Files on disk: written under a temporary name, fsynced, renamed into place atomically.

A reader that lists a directory sees a data file either whole or not at all; the manifest
beside it (written the same way, after the file) says what the file covers. Retention only
removes what a manifest covers, so a file being written, or one never checkpointed, is kept.

A write that fails (full disk, read-only file system, a parent that is not a directory, ...)
raises WriteFailed, which says in words which operation failed, after removing what it had
made: the temporary file, the file if it was already renamed into place, the directories it
created. What could not be removed is listed in `left`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pyarrow as pa

from recorder.exports.columns import Columns
from recorder.exports.writers import HashingFile, TableWriter, open_writer

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
_TRANSCRIPT_DAY = re.compile(r"\d{4}-\d{2}-\d{2}|undated")
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


class WriteFailed(Exception):
    """A file operation failed: `action` says which ("cannot write /x/y.csv"), `reason` why.

    The cause is the OSError. Not a RecorderError: the runner turns it into an ExportError
    that also says what was kept.
    """

    def __init__(self, action: str, cause: OSError) -> None:
        self.action = action
        self.reason = cause.strerror or str(cause)  # "No space left on device", no errno
        #: files the clean-up after the failure could not remove
        self.left: list[Path] = []
        super().__init__(f"{action}: {self.reason}")


@contextlib.contextmanager
def failing_as(action: str) -> Iterator[None]:
    """Turn an OSError inside into WriteFailed(action)."""
    try:
        yield
    except OSError as exc:
        raise WriteFailed(action, exc) from exc


def remove_all(*paths: Path) -> list[Path]:
    """Remove files that may not exist; those that exist and could not be removed."""
    left: list[Path] = []
    for path in paths:
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass  # it is not there
        except OSError:
            left.append(path)
    return left


def make_directories(directory: Path) -> list[Path]:
    """`directory` and its missing parents; those made, outermost first.

    Made one at a time (not mkdir(parents=True)) to know which to remove after a failure,
    and to say which one could not be made.
    """
    missing: list[Path] = []
    at = directory
    with failing_as(f"cannot create directory {directory}"):  # stat can fail: ENAMETOOLONG
        while not at.exists() and at != at.parent:
            missing.append(at)
            at = at.parent
    made: list[Path] = []
    for path in reversed(missing):
        try:
            with failing_as(f"cannot create directory {path}"):
                try:
                    path.mkdir()
                except FileExistsError:
                    if not path.is_dir():
                        raise
                    continue  # made by someone else meanwhile: not ours to remove
        except WriteFailed:
            remove_directories(made)
            raise
        made.append(path)
    return made


def remove_directories(made: list[Path]) -> None:
    """Remove directories `make_directories` made, innermost first, while they are empty."""
    for path in reversed(made):
        try:
            path.rmdir()
        except OSError:
            return  # not empty (another file went there meanwhile), or cannot: leave it


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

    Used from a worker thread. Every method raises WriteFailed for an OSError; a failed
    constructor has removed what it made, and after any other failure `discard` removes the
    temporary file, the file if it was already renamed into place, and directories made.
    """

    def __init__(self, final: Path, fmt: str, columns: Columns, compression: str) -> None:
        self.final = final
        self.temp = temp_path(final)
        self._action = f"cannot write {final}"
        self._raw: BinaryIO | None = None
        self._writer: TableWriter | None = None
        self._renamed = False
        self._made = make_directories(final.parent)
        try:
            with failing_as(self._action):
                self._raw = self.temp.open("wb")
                self._file = HashingFile(self._raw)
                # csv writes its header now, so this can already find the disk full
                self._writer = open_writer(fmt, self._file, columns, compression)
        except WriteFailed as exc:
            exc.left += self.discard()
            raise
        except BaseException:
            self.discard()
            raise

    @property
    def writer(self) -> TableWriter:
        assert self._writer is not None
        return self._writer

    def write(self, table: pa.Table) -> None:
        with failing_as(self._action):
            self.writer.write(table)

    def publish(self, before_rename: Callable[[], None] | None = None) -> FileResult:
        assert self._raw is not None
        with failing_as(self._action):
            self.writer.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
        if before_rename is not None:
            before_rename()
        with failing_as(f"cannot rename {self.temp} to {self.final}"):
            os.replace(self.temp, self.final)
        self._renamed = True
        with failing_as(f"cannot sync directory {self.final.parent}"):
            fsync_directory(self.final.parent)
        return FileResult(self.final, self.writer.rows, self._file.size,
                          self._file.sha256.hexdigest())

    def discard(self) -> list[Path]:
        """Remove what this file made (after a failure); what could not be removed."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()  # now, not in its finalizer, after the file below is closed
        if self._raw is not None:
            with contextlib.suppress(Exception):
                self._raw.close()
        # Renamed but its directory not synced: the file is not known to last, and no
        # manifest will describe it, so it goes too.
        made = [self.temp] if self._raw is not None else []
        left = remove_all(*made, *([self.final] if self._renamed else []))
        remove_directories(self._made)
        return left


def write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    """Raises WriteFailed; nothing of it is left then (the temporary file nor the file)."""
    temp = temp_path(path)
    try:
        with failing_as(f"cannot write {path}"), temp.open("wb") as handle:
            handle.write(orjson.dumps(document,
                                      option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
            handle.flush()
            os.fsync(handle.fileno())
        with failing_as(f"cannot rename {temp} to {path}"):
            os.replace(temp, path)
    except WriteFailed as exc:
        exc.left += remove_all(temp)
        raise
    try:
        with failing_as(f"cannot sync directory {path.parent}"):
            fsync_directory(path.parent)
    except WriteFailed as exc:
        exc.left += remove_all(path)  # in place, but not known to last: as if never written
        raise


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
