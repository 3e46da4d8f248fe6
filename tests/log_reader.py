"""Reading the log: `head()` and `read_after(position, limit)`.

Rows are returned only up to the head, read in the same snapshot, so a reader never sees
position n+1 before n and never has to guess whether a gap will fill.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from recorder.db.target import DatabaseTarget
from recorder.eventlog import sql
from recorder.eventlog.records import EventRecord


class EventLog:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, target: DatabaseTarget, *, max_size: int = 4) -> EventLog:
        pool = await asyncpg.create_pool(target.dsn, min_size=1, max_size=max_size)
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    async def head(self) -> int:
        return int(await self._pool.fetchval(sql.HEAD))

    async def read_after(self, position: int, limit: int = 1000) -> list[EventRecord]:
        if limit <= 0:
            raise ValueError("limit must be positive")
        rows = await self._pool.fetch(sql.READ_AFTER, position, limit)
        return [EventRecord(**dict(row)) for row in rows]
