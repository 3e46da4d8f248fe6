"""A one-line progress display for long commands (rebuild, export), on a terminal only."""

from __future__ import annotations

import time
from typing import TextIO


class ProgressBar:
    """A one-line progress bar for a terminal, redrawn at most ten times a second."""

    def __init__(self, stream: TextIO, width: int = 30, unit: str = "events") -> None:
        self._stream, self._width, self._unit = stream, width, unit
        self._started = time.monotonic()
        self._drawn = 0.0
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._drawn < 0.1 and done < total:
            return
        self._drawn = now
        share = done / total if total else 1.0
        filled = int(share * self._width)
        rate = done / max(now - self._started, 1e-9)
        self._stream.write(
            f"\r[{'#' * filled}{'.' * (self._width - filled)}] {share:6.1%} "
            f"{done}/{total} {self._unit} {rate:,.0f}/s"
        )
        self._stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()
