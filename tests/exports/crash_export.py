"""Run one export job in a child process and die at a named point: a real crash, no cleanup.

    python -m tests.exports.crash_export --dsn DSN --directory DIR --crash-at STEP [...]

STEP is a step the runner reports ("file-renamed", "manifest-written", "checkpointed",
"transcripts-written"), or "mid-write": after the first page (or transcript) is written and
before the last, while only the temporary file exists. The process leaves by `os._exit`, so
nothing is closed, flushed, unlocked or marked failed; the exit status says it crashed where
asked (CRASHED) rather than failing some other way.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from recorder.db.target import DatabaseTarget
from recorder.exports.jobs import DEFAULT_COMPRESSION, ExportJob
from recorder.exports.runner import Exporter

CRASHED = 17
MID_WRITE = "mid-write"


def crash() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(CRASHED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--directory", required=True, type=Path)
    parser.add_argument("--job", default="crash")
    parser.add_argument("--kind", default="events")
    parser.add_argument("--format", default="parquet")
    parser.add_argument("--compression")
    parser.add_argument("--crash-at", required=True)
    parser.add_argument("--page-rows", type=int, default=20_000)
    args = parser.parse_args(argv)
    job = ExportJob(args.job, "1h", args.kind, args.format, args.directory,
                    args.compression or DEFAULT_COMPRESSION[args.format])

    def step(name: str) -> None:
        if name == args.crash_at:
            crash()

    def progress(done: int, total: int) -> None:
        if args.crash_at == MID_WRITE and 0 < done < total:
            crash()

    exporter = Exporter(DatabaseTarget(dsn=args.dsn, embedded=False), page_rows=args.page_rows,
                        step=step)
    asyncio.run(exporter.run_job(job, progress=progress))
    print(f"export job {job.name!r} finished without reaching {args.crash_at!r}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
