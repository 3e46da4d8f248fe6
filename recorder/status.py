"""`recorder status`: what the database holds, in a form for people or for scripts."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import asyncpg

from recorder.coordination.leases import IDENTITY_PREFIX, overview
from recorder.db import migrate
from recorder.db import sql as db_sql
from recorder.db.target import DatabaseTarget, connect
from recorder.eventlog import sql
from recorder.exports import sql as export_sql
from recorder.history import sql as history_sql
from recorder.projection import sql as projection_sql
from recorder.role_processes import read_roles_file

#: A session silent for longer than this is not called connected (the daemon may be gone).
STALE_AFTER_S = 90.0
HOLES_SHOWN = 50


@dataclasses.dataclass
class IdentityStatus:
    identity: str
    consumer_id: str | None
    connection: str  # connected | disconnected | stale
    session_id: str
    last_frame_at: str | None
    sessions: int
    events: int
    duplicates: int
    quarantined: int
    last_close: str | None


@dataclasses.dataclass
class SequenceHole:
    identity: str | None
    dialog_id: str
    conversation_id: str | None
    first_missing: int
    last_missing: int
    session_id: str


@dataclasses.dataclass
class ExportStatus:
    job: str
    status: str  # of the newest run: running | done | failed | abandoned
    kind: str
    format: str
    checkpoint: int | None  # the last position exported (None: no run finished yet)
    window: str  # of the newest run: "(from, to]"
    rows: int | None
    path: str | None
    finished_at: str | None
    error: str | None


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
    identities: list[IdentityStatus] = dataclasses.field(default_factory=list)
    holes: list[SequenceHole] = dataclasses.field(default_factory=list)
    exports: list[ExportStatus] = dataclasses.field(default_factory=list)
    #: the role supervisor's last word (recorder.role_processes), when one runs here
    roles: dict[str, Any] | None = None
    #: instances sharing the database, their leases and the latest lease moves
    instances: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    leases: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    lease_moves: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: checks against LivePerson's history (recorder.history), and agent profiles
    reconciliation: dict[str, Any] | None = None

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
        for who in self.identities:
            lines.append(
                f"identity {who.identity} ({who.consumer_id}): {who.connection}, "
                f"last frame {who.last_frame_at or 'never'}, {who.events} events stored, "
                f"{who.duplicates} duplicates dropped, {who.quarantined} quarantined, "
                f"{who.sessions} sessions" + (f", last close {who.last_close}"
                                               if who.last_close else "")
            )
        if self.holes:
            lines.append(f"sequence holes (first {HOLES_SHOWN}; expected upstream, reported):")
            lines += [
                f"  dialog {h.dialog_id}: {h.first_missing}..{h.last_missing} "
                f"(session {h.session_id}, identity {h.identity})"
                for h in self.holes
            ]
        if self.roles is not None:
            lines.append(f"roles (supervisor pid {self.roles.get('supervisor_pid')}):")
            for role in self.roles.get("roles", []):
                state = ("ready" if role.get("ready") else "starting") if role.get("running") \
                    else f"down ({role.get('last_exit') or 'not started'})"
                lines.append(
                    f"  {role.get('name')}: {state}, pid {role.get('pid')}, "
                    f"{role.get('restarts', 0)} restarts; {role.get('status') or '-'}")
        lines += self._instances_text()
        if self.reconciliation is not None:
            r = self.reconciliation
            lines.append(
                f"reconciliation: {r['conversations']} conversations checked against "
                f"LivePerson's history (last {r['last_checked_at'] or 'never'}), "
                f"{r['closed_unchecked']} closed not yet checked; {r['history_records']} "
                f"history records, {r['matched']} matched, {r['backfilled']} backfilled, "
                f"{r['only_in_log']} only in the log, {r['content_differs']} differing, "
                f"{r['partial']} against a partial history, {r['unreported']} never reported on "
                f"the socket; {r['requests']} requests")
            lines.append(f"agent profiles: {r['agents_known']} known, "
                         f"{r['agents_unknown']} unknown")
        for export in self.exports:
            rows = "-" if export.rows is None else export.rows
            checkpoint = "none" if export.checkpoint is None else export.checkpoint
            lines.append(
                f"export {export.job} ({export.kind}, {export.format}): last run "
                f"{export.status} {export.window}, {rows} rows, finished "
                f"{export.finished_at or '-'}; checkpoint {checkpoint}"
                + (f"; error: {export.error}" if export.error else "")
            )
        return "\n".join(lines)


    def _instances_text(self) -> list[str]:
        if not self.instances:
            return []
        held: dict[str, list[str]] = {}
        for lease in self.leases:
            if lease["holder"] is not None and lease["valid"]:
                held.setdefault(lease["holder"], []).append(lease["resource"])
        lines = ["instances:"]
        names = sorted({i["name"] for i in self.instances})
        for name in names:
            rows = [i for i in self.instances if i["name"] == name]
            live = [i["role"] for i in rows if i["live"]]
            last = max(i["heartbeat_at"] for i in rows)
            state = f"live ({', '.join(live)})" if live else "down"
            lines.append(f"  {name} on {rows[0]['host']} (pid {rows[0]['pid']}): {state}, "
                         f"last heartbeat {last}")
            mine = held.get(name, [])
            identities = sorted(r for r in mine if r.startswith(IDENTITY_PREFIX))
            singletons = sorted(r for r in mine if not r.startswith(IDENTITY_PREFIX))
            if identities:
                lines.append(f"    holds {len(identities)} identities: "
                             + ", ".join(r.removeprefix(IDENTITY_PREFIX) for r in identities))
            if singletons:
                lines.append(f"    holds the {' and the '.join(singletons)} lease")
        free = [lease["resource"] for lease in self.leases
                if lease["holder"] is None or not lease["valid"]]
        if free:
            lines.append(f"  not held: {', '.join(free)}")
        if self.lease_moves:
            lines.append("lease moves (latest first):")
            lines += [f"  {m['at']} {m['resource']}: {m['from_instance'] or '-'} -> "
                      f"{m['to_instance'] or '-'} (epoch {m['epoch']}, {m['reason']})"
                      for m in self.lease_moves]
        return lines


def _export(row: Any) -> ExportStatus:
    finished = row["finished_at"]
    return ExportStatus(
        job=row["job"], status=row["status"], kind=row["kind"], format=row["format"],
        checkpoint=row["checkpoint"], window=f"({row['from_position']}, {row['to_position']}]",
        rows=row["rows"], path=row["path"],
        finished_at=None if finished is None else finished.isoformat(timespec="seconds"),
        error=row["error"],
    )


def _identity(row: Any) -> IdentityStatus:
    if row["closed_at"] is not None:
        connection = "disconnected"
    elif row["idle_s"] is not None and row["idle_s"] > STALE_AFTER_S:
        connection = f"stale (no update for {row['idle_s']:.0f}s: is the daemon running?)"
    else:
        connection = "connected"
    last_close = None
    if row["closed_at"] is not None:
        last_close = f"{row['close_code']} {row['close_reason'] or ''}".strip()
    last_frame = row["last_frame_at"]
    return IdentityStatus(
        identity=row["identity_name"], consumer_id=row["consumer_id"], connection=connection,
        session_id=row["session_id"],
        last_frame_at=None if last_frame is None else last_frame.isoformat(timespec="seconds"),
        sessions=row["sessions"], events=row["events"], duplicates=int(row["duplicates"] or 0),
        quarantined=int(row["quarantined"] or 0), last_close=last_close,
    )


async def read_status(target: DatabaseTarget, state_dir: Path | None = None,
                      lease_ttl_s: float = 15.0) -> Status:
    revision = await migrate.current_revision(target)
    connection = await connect(target)
    identities: list[IdentityStatus] = []
    holes: list[SequenceHole] = []
    exports: list[ExportStatus] = []
    coordination: dict[str, Any] = {}
    reconciliation: dict[str, Any] | None = None
    try:
        settings = dict(await connection.fetch(db_sql.SERVER_SETTINGS))
        head = positions = quarantined = None
        if revision is not None:
            try:
                head = int(await connection.fetchval(sql.HEAD))
                positions = {r["name"]: r["position"] for r in await connection.fetch(
                    projection_sql.PROJECTION_POSITIONS)}
                quarantined = int(await connection.fetchval(sql.QUARANTINE_COUNT))
                identities = [_identity(r) for r in await connection.fetch(sql.IDENTITY_STATUS)]
                holes = [
                    SequenceHole(**dict(r))
                    for r in await connection.fetch(sql.SEQUENCE_HOLES, HOLES_SHOWN)
                ]
                exports = [_export(r) for r in await connection.fetch(export_sql.LAST_RUNS)]
                coordination = _printable(await overview(connection, lease_ttl_s))
                try:
                    totals = await connection.fetchrow(history_sql.RECONCILIATION_TOTALS)
                    reconciliation = _printable({"totals": [dict(totals)]})["totals"][0]
                except asyncpg.UndefinedTableError:
                    pass  # before revision 0006
            except asyncpg.UndefinedTableError:
                head = None
            except asyncpg.UndefinedColumnError:
                pass  # export_runs before revision 0003: `recorder migrate` adds the columns
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
        identities=identities,
        holes=holes,
        exports=exports,
        roles=read_roles_file(state_dir) if state_dir is not None else None,
        instances=coordination.get("instances", []),
        leases=coordination.get("leases", []),
        lease_moves=coordination.get("moves", []),
        reconciliation=reconciliation,
    )


def _printable(found: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Times as ISO text (second precision), so `--json` and the text agree."""
    return {
        key: [{k: v.isoformat(timespec="seconds") if isinstance(v, dt.datetime) else v
               for k, v in row.items()} for row in rows]
        for key, rows in found.items()
    }
