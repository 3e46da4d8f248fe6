"""`recorder status`: what the database holds, in a form for people or for scripts."""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg

from recorder import migrate, sql
from recorder.database import DatabaseTarget, connect


@dataclasses.dataclass
class Status:
    database: str
    embedded: bool
    server_version: str
    schema_revision: str | None
    expected_revision: str
    log_head: int | None
    projection_positions: dict[str, int]
    quarantined: int | None

    @property
    def schema_current(self) -> bool:
        return self.schema_revision == self.expected_revision

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "schema_current": self.schema_current}

    def as_text(self) -> str:
        revision = self.schema_revision or "none"
        if not self.schema_current:
            revision += f" (this recorder needs {self.expected_revision}: run `recorder migrate`)"
        head = "-" if self.log_head is None else str(self.log_head)
        lines = [
            f"database:        {self.database}",
            f"server version:  {self.server_version}",
            f"schema revision: {revision}",
            f"log head:        {head}",
        ]
        if self.quarantined is not None:
            lines.append(f"quarantined:     {self.quarantined}")
        if self.projection_positions:
            lines.append("projections:")
            lines += [f"  {name}: {pos}" for name, pos in self.projection_positions.items()]
        else:
            lines.append("projections:     none yet")
        return "\n".join(lines)


async def read_status(target: DatabaseTarget) -> Status:
    revision = await migrate.current_revision(target)
    connection = await connect(target)
    try:
        settings = dict(await connection.fetch(sql.SERVER_SETTINGS))
        head = positions = quarantined = None
        if revision is not None:
            try:
                head = int(await connection.fetchval(sql.HEAD))
                positions = {r["name"]: r["position"] for r in await connection.fetch(
                    sql.PROJECTION_POSITIONS)}
                quarantined = int(await connection.fetchval(sql.QUARANTINE_COUNT))
            except asyncpg.UndefinedTableError:
                head = None
    finally:
        await connection.close()
    return Status(
        database=target.describe(),
        embedded=target.embedded,
        server_version=str(settings.get("server_version", "?")),
        schema_revision=revision,
        expected_revision=migrate.head_revision(),
        log_head=head,
        projection_positions=positions or {},
        quarantined=quarantined,
    )
