"""One column list: the events table in recorder.db.schema; everything else follows it."""

from __future__ import annotations

import dataclasses
import re

import asyncpg

from recorder.db import schema
from recorder.eventlog import appender, sql
from recorder.eventlog.records import EventRecord
from recorder.exports import columns as export_columns
from tests.helpers import message_event

APPENDED = tuple(c for c in schema.EVENT_COLUMNS if c not in ("position", "recorded_at"))


def test_the_record_has_exactly_the_tables_columns() -> None:
    fields = [field.name for field in dataclasses.fields(EventRecord)]
    assert sorted(fields) == sorted(schema.EVENT_COLUMNS)
    # what the writer fills first, in table order; then what the commit gives it
    assert tuple(fields[: len(APPENDED)]) == APPENDED
    assert fields[len(APPENDED):] == ["position", "recorded_at"]


def test_the_append_statement_takes_the_record_in_table_order() -> None:
    unnest = re.search(r"AS t\((.*?)\)", sql.APPEND_BATCH, re.DOTALL)
    assert unnest is not None
    names = [n.strip() for n in unnest.group(1).split(",")]
    assert tuple(names) == (*APPENDED, "ord")
    inserted = re.search(r"INSERT INTO events \((.*?)\)", sql.APPEND_BATCH, re.DOTALL)
    assert inserted is not None
    assert tuple(n.strip() for n in inserted.group(1).split(",")) == schema.EVENT_COLUMNS


def test_the_appender_passes_each_field_in_the_statements_place() -> None:
    event = message_event("conv-columns", 7)
    arrays = appender._columns([event])
    assert [array[0] for array in arrays] == [getattr(event, name) for name in APPENDED]


def test_exports_type_every_public_column() -> None:
    assert tuple(export_columns.EVENTS.schema.names) == schema.PUBLIC_EVENT_COLUMNS


async def test_a_row_read_back_is_a_record(db: asyncpg.Connection) -> None:
    await db.execute("UPDATE log_head SET position = 1")
    await db.execute(
        "INSERT INTO events (position, received_at, account_id, consumer_id, session_id, kind,"
        " type, dedupe_key, payload) VALUES (1, now(), 'a', 'c', gen_random_uuid(), 'other',"
        " 't', '\\x00', '{}')"
    )
    (row,) = await db.fetch(sql.READ_AFTER, 0, 10)
    record = EventRecord(**dict(row))
    assert record.position == 1 and record.recorded_at is not None
    assert tuple(row.keys()) == schema.EVENT_COLUMNS
