"""A token bucket: paces requests so a reconnect with hundreds of dialogs does not burst."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    def _fill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: waiters are served in arrival order
            self._fill()
            while self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self._rate)
                self._fill()
            self._tokens -= 1

    def hold(self, seconds: float) -> None:
        """Spend ahead: after a 429 nobody sends for at least `seconds`."""
        self._fill()
        self._tokens = min(self._tokens, 0.0) - seconds * self._rate
