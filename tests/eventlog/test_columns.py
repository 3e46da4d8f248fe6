"""One column list: the events table in recorder.db.schema; everything else follows it."""

from __future__ import annotations

import dataclasses
import datetime as dt

import asyncpg
import orjson

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


def test_the_copy_is_derived_from_the_tables_column_list() -> None:
    # derived, not spelled again: the very tuple of recorder.db.schema
    assert sql.COPY_COLUMNS is schema.EVENT_COLUMNS
    assert tuple(column.name for column in schema.events.columns) == sql.COPY_COLUMNS
    assert sql.COPY_TABLE == schema.events.name == "events"
    # the timestamptz columns, read from the table's types
    assert {"received_at", "recorded_at", "server_ts"} == appender.TIME_COLUMNS


def test_the_appender_puts_each_field_in_its_columns_place() -> None:
    event = message_event("conv-columns", 7)
    recorded_at = 851_000_000_123_456  # as read back through the writer's codec
    (row,) = appender.copy_rows([event], 42, recorded_at)
    assert len(row) == len(sql.COPY_COLUMNS)
    values = dict(zip(sql.COPY_COLUMNS, row, strict=True))
    assert values.pop("position") == 42 and values.pop("recorded_at") == recorded_at
    for name in ("received_at", "server_ts"):
        micros = values.pop(name)
        assert isinstance(micros, int)
        assert abs(micros / 1e6 + appender.PG_EPOCH_S - getattr(event, name)) < 1e-6
    assert values == {name: getattr(event, name) for name in values}
    assert set(values) == set(APPENDED) - appender.TIME_COLUMNS


def test_copy_rows_are_in_input_order_from_the_first_position() -> None:
    events = [message_event("conv-columns", n) for n in range(3)]
    events[1].server_ts = None
    rows = appender.copy_rows(events, 5, 0)
    position, server_ts, key = (sql.COPY_COLUMNS.index(n)
                                for n in ("position", "server_ts", "dedupe_key"))
    assert [row[position] for row in rows] == [5, 6, 7]
    assert [row[key] for row in rows] == [e.dedupe_key for e in events]
    assert rows[1][server_ts] is None


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


async def test_an_appended_record_reads_back_as_itself(db: asyncpg.Connection) -> None:
    event = message_event("conv-columns", 3)
    event.server_ts = None
    result = await appender.BatchAppender(lambda: 0, lambda: None).append(db, [event])
    assert result.stored == [(1, event)]
    (row,) = await db.fetch(sql.READ_AFTER, 0, 10)
    back = EventRecord(**dict(row))
    assert back.position == 1 and back.recorded_at is not None
    assert abs(back.received_at - event.received_at) < 1e-6
    assert orjson.loads(back.payload) == orjson.loads(event.payload)  # jsonb: no key order
    same = [name for name in APPENDED if name not in ("received_at", "payload")]
    assert [getattr(back, n) for n in same] == [getattr(event, n) for n in same]


def test_times_go_as_postgresql_microseconds_whatever_pythons_datetime_can_hold() -> None:
    assert appender.pg_micros(appender.PG_EPOCH_S) == 0
    assert appender.pg_micros(appender.PG_EPOCH_S + 1.5) == 1_500_000
    assert appender.pg_micros(1e12) == (10**12 - appender.PG_EPOCH_S) * 10**6  # year 33658
    assert appender._encode_time(dt.datetime(2000, 1, 1, 0, 0, 1, 5, tzinfo=dt.UTC)) == (
        1_000_005,)
