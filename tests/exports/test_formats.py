"""Export files read back with independent readers equal the database, row for row.

Every format and codec, for the log (`events`), the projection (`conversations`) and closed
conversations' messages (`transcripts`); manifests describe their files exactly; ad hoc
windows by position and by time select exactly what they say.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recorder.api import sql as api_sql
from recorder.db import migrate
from recorder.db.target import DatabaseTarget
from recorder.eventlog.records import EventRecord, dedupe_digest
from recorder.exports.columns import CONVERSATIONS, EVENTS, MESSAGES, SCHEMA_VERSION, TIMESTAMP
from recorder.exports.command import parse_bound
from recorder.exports.files import MANIFEST_SUFFIX
from recorder.exports.jobs import ExportJob
from recorder.exports.runner import Exporter, ExportError
from tests.exports.readback import expected, read_rows, sha256
from tests.projection_helpers import (
    AGENT1,
    AGENT2,
    CONSUMER,
    append,
    append_changes,
    content,
    delete,
    project,
    receipt,
    upsert,
)

SESSION = str(uuid.UUID(int=7))
T0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC, in ms
BIG = 2**63 - 1

EVENT_ROWS = """
SELECT position, received_at, recorded_at, account_id, consumer_id, session_id::text AS session_id,
       kind, type, change_type, conversation_id, dialog_id, sequence, originator_id, server_ts,
       payload::text AS payload
FROM events ORDER BY position
"""

#: (format, compression): every codec of every format
FORMATS = [
    ("parquet", "zstd"), ("parquet", "none"), ("parquet", "snappy"), ("parquet", "gzip"),
    ("parquet", "lz4"),
    ("csv", "none"), ("csv", "gzip"), ("csv", "zstd"),
    ("jsonl", "none"), ("jsonl", "gzip"), ("jsonl", "zstd"),
]


def job(tmp_path: Path, kind: str, fmt: str, compression: str, name: str = "x") -> ExportJob:
    return ExportJob(name, "1h", kind, fmt, tmp_path / "out", compression)


def awkward_event(n: int, **changes: Any) -> EventRecord:
    """A messaging event whose text columns and payload are hard to get through CSV/JSON."""
    payload = {
        "text": 'comma, "quoted", CRLF\r\nLF\nCR\r tab\t backslash\\ nul-ish \\u0000',
        "unicode": "ü 😀 中文 \u2028 \u00a0", "empty": "", "null": None, "n": n,
        "float": 1.5, "big": BIG, "negative": -(2**62), "nested": {"list": [1, "2", [], {}]},
    }
    record = EventRecord(
        received_at=1_700_000_000.123456 + n, account_id="71234567",
        consumer_id='consumer, "one"', session_id=SESSION, kind="messaging",
        type="ms.MessagingEventNotification", change_type="ContentEvent",
        conversation_id=f"conv\r\n{n}", dialog_id=f"dialog,{n}", sequence=BIG - n,
        originator_id="ü😀 中文", server_ts=1_700_000_000.25 + n / 1000,
        dedupe_key=dedupe_digest("test", str(n)), payload=orjson.dumps(payload).decode(),
    )
    return dataclasses.replace(record, **changes)


def awkward_log() -> list[EventRecord]:
    return [
        awkward_event(1),
        # '' is not NULL: an empty dialog id, change type and originator
        awkward_event(2, dialog_id="", change_type="", originator_id=""),
        # a conversation event: no dialog, sequence or originator (NULL)
        awkward_event(3, kind="conversation", type="cqm.ExConversationChangeNotification",
                      change_type="UPSERT", dialog_id=None, sequence=None, originator_id=None),
        # text that looks like NULL or a number must stay text
        awkward_event(4, kind="other", type="Other", change_type=None, conversation_id=None,
                      dialog_id="\\N", sequence=0, originator_id="NULL", server_ts=None,
                      account_id="0042"),
        awkward_event(5, sequence=-1, server_ts=0.0, payload='{"only": "\\"quotes\\""}'),
        awkward_event(6, consumer_id='""', conversation_id='"', dialog_id=",",
                      payload="[1, 2, 3]"),
        awkward_event(7, conversation_id=" leading and trailing spaces ", sequence=1,
                      originator_id="bare\rCR", change_type="bare\nLF"),
        awkward_event(8, payload='"just a string, with a comma"'),
    ]


async def log_rows(db: asyncpg.Connection) -> list[dict[str, Any]]:
    return expected(await db.fetch(EVENT_ROWS), EVENTS)


def check_manifest(manifest: dict[str, Any], path: Path, rows: int, beside: Path) -> None:
    """The manifest describes the file exactly, and is on disk (`beside` the file)."""
    assert manifest["file"] == path.name
    assert manifest["rows"] == rows
    assert manifest["bytes"] == path.stat().st_size
    assert manifest["sha256"] == sha256(path)
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["database_revision"] == migrate.head_revision()
    assert orjson.loads(beside.read_bytes()) == manifest


def job_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    name = manifest["job"]
    low, high = manifest["from_position"], manifest["to_position"]
    return directory / f"{name}-{low + 1:012d}-{high:012d}{MANIFEST_SUFFIX}"


# -- events ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "compression"), FORMATS)
async def test_events_round_trip_in_every_format(
    tmp_path: Path, database: DatabaseTarget, db: asyncpg.Connection, fmt: str,
    compression: str,
) -> None:
    head = await append(database, awkward_log())
    assert head == 8
    exporter = Exporter(database, page_rows=3)  # three pages: three row groups / chunks
    export = job(tmp_path, "events", fmt, compression)

    [manifest] = await exporter.run_job(export)

    path = tmp_path / "out" / f"x-000000000001-000000000008{export.suffix}"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [path.name, f"x-000000000001-000000000008{MANIFEST_SUFFIX}"])
    check_manifest(manifest, path, 8, job_manifest(tmp_path / "out", manifest))
    assert (manifest["from_position"], manifest["to_position"]) == (0, 8)
    assert (manifest["kind"], manifest["format"], manifest["compression"]) == (
        "events", fmt, compression)
    assert manifest["columns"] == EVENTS.describe()
    rows = read_rows(path, fmt, compression, EVENTS)
    assert rows == await log_rows(db)
    # the awkward values really are there, distinct
    assert rows[1]["dialog_id"] == "" and rows[2]["dialog_id"] is None
    assert rows[1]["change_type"] == "" and rows[3]["change_type"] is None
    assert rows[3]["dialog_id"] == "\\N" and rows[3]["originator_id"] == "NULL"
    assert rows[0]["sequence"] == BIG - 1 and rows[0]["conversation_id"] == "conv\r\n1"
    assert rows[0]["payload"]["big"] == BIG
    assert rows[5]["payload"] == [1, 2, 3] and rows[7]["payload"] == "just a string, with a comma"

    if fmt == "parquet":
        schema = pq.read_schema(path)
        assert schema.field("position").type == pa.int64()
        assert schema.field("sequence").type == pa.int64()
        for name in ("received_at", "recorded_at", "server_ts"):
            assert schema.field(name).type == pa.timestamp("us", tz="UTC") == TIMESTAMP
        assert schema.field("payload").type == pa.string()
        assert schema.metadata[b"recorder.schema_version"] == str(SCHEMA_VERSION).encode()
        assert pq.ParquetFile(path).num_row_groups == math.ceil(8 / 3)
        codec = pq.ParquetFile(path).metadata.row_group(0).column(0).compression
        assert codec == ("UNCOMPRESSED" if compression == "none" else compression.upper())
    elif compression == "gzip":
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    elif compression == "zstd":
        assert path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"


@pytest.mark.parametrize(("fmt", "compression"), [("parquet", "zstd"), ("jsonl", "none"),
                                                  ("csv", "none")])
async def test_server_times_out_of_range_are_exported_as_null(
    tmp_path: Path, database: DatabaseTarget, db: asyncpg.Connection, fmt: str,
    compression: str,
) -> None:
    """The log takes any server_ts PostgreSQL can hold: past the year 9999 (a microsecond
    clock read as milliseconds lands near the year 55000) or BC. Such a page cannot fail the
    job's every run: the time is exported as NULL, the payload keeps the value that was
    sent, and every other row and column is exported as it is."""
    await append(database, [
        awkward_event(1),
        awkward_event(2, server_ts=1e12, payload='{"serverTimestamp": 1000000000000000}'),
        awkward_event(3, server_ts=-1e11),
        awkward_event(4, server_ts=-62135596800.0),  # 0001-01-01 00:00:00 UTC: still fine
    ])
    export = job(tmp_path, "events", fmt, compression)
    [manifest] = await Exporter(database).run_job(export)
    rows = read_rows(tmp_path / "out" / manifest["file"], fmt, compression, EVENTS)
    held = await db.fetch(
        "SELECT (server_ts AT TIME ZONE 'UTC')::text FROM events ORDER BY position")
    assert [r[0] for r in held][1:3] == ["33658-09-27 01:46:40", "1200-02-15 14:13:20 BC"]
    in_range = EVENT_ROWS.replace(
        "originator_id, server_ts,",
        "originator_id, CASE WHEN server_ts BETWEEN '0001-01-01 00:00:00+00' AND "
        "'9999-12-31 23:59:59.999999+00' THEN server_ts END AS server_ts,")
    want = expected(await db.fetch(in_range), EVENTS)
    assert rows == want
    assert [r["server_ts"] for r in rows][1:] == [None, None, dt.datetime(1, 1, 1, tzinfo=dt.UTC)]
    assert rows[0]["server_ts"] is not None
    assert rows[1]["payload"] == {"serverTimestamp": 10**15}


# -- conversations ---------------------------------------------------------------------------------

A, B, C, D = "conv-a", "conv-b, \"quoted\"", "conv-c", "conv-d"

CONVERSATION_ROWS = """
SELECT conversation_id, account_id, consumer_id, brand_id, skill_id, state, stage, close_reason,
       start_ts, end_ts, csat_rate, csat_resolution_confirmation, csat_status, ttr_type,
       ttr_value, effective_ttr, deleted, transfers::text AS transfers, first_position,
       last_position, updated_at
FROM conversations ORDER BY last_position, conversation_id
"""


def conversation_log() -> list[dict[str, Any]]:
    closing = upsert(
        A, T0 + 3_000, agents=[AGENT2], skill="200", state="CLOSE", stage="CLOSE",
        dialog_state="CLOSE", endTs=T0 + 100_000, closeReason="AGENT",
        csat={"csatRate": 5, "csatResolutionConfirmation": False, "status": "FILLED"},
        ttr={"ttrType": "URGENT", "value": 2**40},
    )
    closing["result"]["effectiveTTR"] = T0 + 500_000
    return [
        upsert(A, T0 + 1_000, agents=[AGENT1], readers=[AGENT2]),
        content(A, 0, "hi"),
        upsert(B, T0 + 1_500, skill=None),
        closing,  # a skill and an agent transfer, CSAT, TTR
        upsert(C, T0 + 2_000, skill="", brandId=""),  # '' is not NULL
        delete(D, T0 + 2_500),
        content(B, 0, "hello"),
    ]


@pytest.mark.parametrize(("fmt", "compression"), [("parquet", "zstd"), ("csv", "gzip"),
                                                  ("jsonl", "none")])
async def test_conversations_equal_the_projection(
    tmp_path: Path, database: DatabaseTarget, db: asyncpg.Connection, fmt: str,
    compression: str,
) -> None:
    await append_changes(database, conversation_log())
    await project(database)
    export = job(tmp_path, "conversations", fmt, compression, name="conv")
    exporter = Exporter(database, page_rows=2)  # keyset pages of (last_position, id)

    [manifest] = await exporter.run_job(export)

    path = tmp_path / "out" / manifest["file"]
    check_manifest(manifest, path, 4, job_manifest(tmp_path / "out", manifest))
    assert manifest["positions"] == "projection" and manifest["to_position"] == 7
    assert manifest["columns"] == CONVERSATIONS.describe()
    rows = read_rows(path, fmt, compression, CONVERSATIONS)
    table = await db.fetch(CONVERSATION_ROWS)
    assert [r["conversation_id"] for r in rows] == [r["conversation_id"] for r in table]
    assert len(rows) == 4
    for row, record in zip(rows, table, strict=True):
        api = await db.fetchrow(api_sql.GET_CONVERSATION_RECORD, record["conversation_id"])
        want = {name: record[name] for name in CONVERSATIONS.names
                if name not in ("participants", "dialogs")}
        want["transfers"] = orjson.loads(record["transfers"])
        want["participants"] = orjson.loads(api["participants_json"])
        want["dialogs"] = [with_times(d) for d in orjson.loads(api["dialogs_json"])]
        got = dict(row, dialogs=[with_times(d) for d in row["dialogs"]])
        assert got == {name: want[name] for name in CONVERSATIONS.names}

    by_id = {row["conversation_id"]: row for row in rows}
    a = by_id[A]
    assert (a["csat_rate"], a["csat_resolution_confirmation"]) == (5, False)
    assert (a["ttr_type"], a["ttr_value"]) == ("URGENT", 2**40)
    assert a["end_ts"] == dt.datetime.fromtimestamp((T0 + 100_000) / 1000, dt.UTC)
    assert a["effective_ttr"] == dt.datetime.fromtimestamp((T0 + 500_000) / 1000, dt.UTC)
    assert {t["kind"] for t in a["transfers"]} == {"skill", "agent"}
    assert by_id[C]["skill_id"] == "" and by_id[C]["brand_id"] == ""
    assert by_id[B]["skill_id"] is None and by_id[B]["close_reason"] is None
    assert by_id[D]["deleted"] is True
    if fmt == "parquet":
        schema = pq.read_schema(path)
        assert schema.field("csat_rate").type == pa.int32()
        assert schema.field("csat_resolution_confirmation").type == pa.bool_()
        assert schema.field("deleted").type == pa.bool_()
        assert schema.field("last_position").type == pa.int64()
        assert schema.field("end_ts").type == TIMESTAMP

    # The next run has only what changed since: B, in the window after the checkpoint.
    await append_changes(database, [upsert(B, T0 + 9_000, agents=[AGENT1])])
    await project(database)
    [again] = await exporter.run_job(export)
    assert (again["from_position"], again["to_position"]) == (7, 8)
    rows = read_rows(tmp_path / "out" / again["file"], fmt, compression, CONVERSATIONS)
    assert [(r["conversation_id"], r["last_position"]) for r in rows] == [(B, 8)]
    assert await exporter.run_job(export) == []


def with_times(dialog: dict[str, Any]) -> dict[str, Any]:
    """A dialog of the JSON columns with its times as instants (each side renders its own)."""
    return dict(dialog, **{
        key: dialog[key] and dt.datetime.fromisoformat(dialog[key])
        for key in ("creation_ts", "end_ts")
    })


# -- transcripts -----------------------------------------------------------------------------------

T1, T2, T3, T4 = "closed-one", "closed/two and space", "still-open", "closed-empty"
SURVEY = "a-survey"  # sorts before T1, but was created after it: creation order wins
T1_END, T2_END = T0 + 100_000, T0 + 2 * 86_400_000


def closed(conversation: str, ts: int, end: int | None, **details: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {"endTs": end} if end is not None else {}
    return upsert(conversation, ts, state="CLOSE", stage="CLOSE", dialog_state="CLOSE",
                  agents=[AGENT1], **extra, **details)


def transcript_log() -> list[dict[str, Any]]:
    with_survey = closed(T1, T0 + 5_000, T1_END)
    dialogs = with_survey["result"]["conversationDetails"]["dialogs"]
    survey = {**dialogs[0], "dialogId": SURVEY, "dialogType": "POST_SURVEY",
              "creationTs": T0 + 50_000}
    dialogs.insert(0, survey)
    return [
        upsert(T1, T0 + 1_000, agents=[AGENT1]),
        content(T1, 1, "second, \"quoted\"\r\nline", originator=AGENT1, role="ASSIGNED_AGENT"),
        content(T1, 0, "first ü😀"),
        content(T1, 0, "survey answer", dialog=SURVEY),
        receipt(T1, 3, [0, 1], "READ", originator=CONSUMER, role="CONSUMER"),
        content(T1, 2, ""),
        upsert(T2, T0 + 1_000),
        content(T2, 0, "two"),
        upsert(T3, T0 + 1_000),
        content(T3, 0, "open: not exported"),
        with_survey,
        closed(T2, T0 + 6_000, T2_END),
        closed(T4, T0 + 6_000, None),
    ]


TRANSCRIPT_ROWS = """
SELECT m.conversation_id, m.dialog_id, d.dialog_type, m.sequence, m.server_ts, m.originator_id,
       m.originator_role, m.event_type, m.content_type, m.text,
       m.rich_content::text AS rich_content, m.file::text AS file,
       m.metadata::text AS metadata, m.audience, m.event::text AS event,
       NULL AS receipts, m.position
FROM messages m LEFT JOIN dialogs d USING (dialog_id)
WHERE m.conversation_id = $1 AND m.dialog_id = $2 AND m.sequence = $3
"""


@pytest.mark.parametrize(("fmt", "compression"), [("jsonl", "gzip"), ("csv", "none"),
                                                  ("parquet", "snappy")])
async def test_transcripts_one_file_per_closed_conversation(
    tmp_path: Path, database: DatabaseTarget, db: asyncpg.Connection, fmt: str,
    compression: str,
) -> None:
    await append_changes(database, transcript_log())
    await project(database)
    export = job(tmp_path, "transcripts", fmt, compression, name="tr")

    [manifest] = await Exporter(database).run_job(export)

    root = tmp_path / "out"
    head = manifest["to_position"]
    assert root / f"tr-000000000001-{head:012d}{MANIFEST_SUFFIX}" in root.iterdir()
    assert orjson.loads(
        (root / f"tr-000000000001-{head:012d}{MANIFEST_SUFFIX}").read_bytes()) == manifest
    day = dt.datetime.fromtimestamp(T1_END / 1000, dt.UTC).date().isoformat()
    day2 = dt.datetime.fromtimestamp(T2_END / 1000, dt.UTC).date().isoformat()
    assert day != day2
    paths = {
        T1: f"{day}/{T1}{export.suffix}",
        T2: f"{day2}/closed%2Ftwo%20and%20space{export.suffix}",
        T4: f"undated/{T4}{export.suffix}",
    }
    assert {e["conversation_id"]: e["path"] for e in manifest["files"]} == paths, \
        "closed conversations only, the open one has no file"
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                     and not p.name.endswith(MANIFEST_SUFFIX))
    assert written == sorted(paths.values())
    assert manifest["conversations"] == 3
    assert manifest["columns"] == MESSAGES.describe()

    contents = {}
    for entry in manifest["files"]:
        path = root / entry["path"]
        assert entry["sha256"] == sha256(path) and entry["bytes"] == path.stat().st_size
        contents[entry["conversation_id"]] = read_rows(path, fmt, compression, MESSAGES)
        assert entry["rows"] == len(contents[entry["conversation_id"]])
    assert manifest["rows"] == sum(e["rows"] for e in manifest["files"]) == 5

    # Reading order: dialogs by creation (MAIN, then the later survey), then sequence.
    assert [(r["dialog_id"], r["sequence"]) for r in contents[T1]] == [
        (T1, 0), (T1, 1), (T1, 2), (SURVEY, 0)]
    assert [r["text"] for r in contents[T1]] == [
        "first ü😀", "second, \"quoted\"\r\nline", "", "survey answer"]
    assert [r["dialog_type"] for r in contents[T1]] == ["MAIN"] * 3 + ["POST_SURVEY"]
    assert contents[T4] == []
    for conversation in (T1, T2):
        for row in contents[conversation]:
            record = await db.fetchrow(TRANSCRIPT_ROWS, conversation, row["dialog_id"],
                                       row["sequence"])
            [want] = expected([record], MESSAGES)
            receipts = await db.fetch(
                "SELECT participant_id, status, server_ts FROM receipts "
                "WHERE dialog_id = $1 AND sequence = $2 ORDER BY participant_id, status",
                row["dialog_id"], row["sequence"])
            got_receipts = sorted(
                (r["participant_id"], r["status"], dt.datetime.fromisoformat(r["server_ts"]))
                for r in row["receipts"] or [])
            assert got_receipts == [tuple(r) for r in receipts]
            assert dict(row, receipts=None) == want
    assert len(contents[T1][0]["receipts"]) == 1, "the READ receipt of sequence 0"

    # Ad hoc, by close time: only the conversation closed on or after day2.
    out = tmp_path / "adhoc"
    since = parse_bound(day2, "--since")
    assert since == dt.datetime.fromisoformat(day2).replace(tzinfo=dt.UTC)
    adhoc = await Exporter(database).run_adhoc("transcripts", fmt, compression, out,
                                               since=since)
    assert [e["conversation_id"] for e in adhoc["files"]] == [T2]
    assert (out / f"transcripts{MANIFEST_SUFFIX}").exists()
    assert read_rows(out / adhoc["files"][0]["path"], fmt, compression, MESSAGES) == \
        contents[T2]


# -- ad hoc windows --------------------------------------------------------------------------------


async def test_adhoc_windows_by_position_and_by_time(
    tmp_path: Path, database: DatabaseTarget, db: asyncpg.Connection
) -> None:
    base = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    await append(database, [
        awkward_event(n, received_at=(base + dt.timedelta(hours=n)).timestamp())
        for n in range(1, 7)
    ])
    everything = await log_rows(db)
    exporter = Exporter(database)

    async def export(since: str | None, until: str | None, name: str) -> list[int]:
        out = tmp_path / f"{name}.jsonl"
        manifest = await exporter.run_adhoc(
            "events", "jsonl", "none", out,
            since=parse_bound(since, "--since"), until=parse_bound(until, "--until"))
        rows = read_rows(out, "jsonl", "none", EVENTS)
        assert rows == [r for r in everything if r["position"] in
                        {row["position"] for row in rows}]
        check_manifest(manifest, out, len(rows), out.with_name(out.name + MANIFEST_SUFFIX))
        assert manifest["job"] is None
        return [r["position"] for r in rows]

    # positions: after --since, up to --until inclusive
    assert await export("2", "4", "p") == [3, 4]
    assert await export(None, "1", "first") == [1]
    assert await export("5", None, "rest") == [6]
    assert await export(None, None, "all") == [1, 2, 3, 4, 5, 6]
    # times (received_at): from --since on, before --until; naive means UTC
    assert await export("2026-11-01T02:00:00", "2026-11-01T05:00:00+00:00", "t") == [2, 3, 4]
    assert await export("2026-11-01T04:30:00+01:00", None, "tz") == [4, 5, 6]
    assert await export("2026-11-01", "2026-11-01T01:00:00.000001", "day") == [1]
    # a position and a time together
    assert await export("3", "2026-11-01T06:00:00Z", "mixed") == [4, 5]
    manifest = orjson.loads((tmp_path / f"t.jsonl{MANIFEST_SUFFIX}").read_bytes())
    assert manifest["since"] == "2026-11-01T02:00:00+00:00"
    assert manifest["until"] == "2026-11-01T05:00:00+00:00"

    # Nothing is checkpointed by ad hoc runs, and an empty window is an error, not a file.
    assert await db.fetchval("SELECT count(*) FROM export_runs WHERE job IS NOT NULL") == 0
    with pytest.raises(ExportError, match="nothing to export"):
        await exporter.run_adhoc("events", "jsonl", "none", tmp_path / "none.jsonl",
                                 since=6)
    assert not (tmp_path / "none.jsonl").exists()
