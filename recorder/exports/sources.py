"""Rows out of PostgreSQL as typed Arrow tables, a bounded page at a time.

Each page is a `COPY (query) TO STDOUT (FORMAT csv)`: the server formats the rows and Arrow's
C++ CSV reader types them, in a worker thread, so no Python object is made per row or value.
Memory is bounded by the page size, whatever the size of the export.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.csv as pcsv

from recorder.exports import sql
from recorder.exports.columns import CONVERSATIONS, EVENTS, MESSAGES, Columns

#: A page to turn into a table; called in a worker thread.
Page = Callable[[], pa.Table]
#: Server settings of export connections: CSV timestamps in UTC, ISO style.
SESSION_SETTINGS = {"timezone": "UTC", "datestyle": "ISO", "application_name": "recorder export"}


class CsvTables:
    """Parses the server's CSV for one set of columns: unquoted empty is NULL, `""` is ''."""

    def __init__(self, columns: Columns) -> None:
        self.columns = columns
        self._read = pcsv.ReadOptions(column_names=columns.names, block_size=8 << 20)
        self._parse = pcsv.ParseOptions(newlines_in_values=True)
        self._convert = pcsv.ConvertOptions(
            column_types=dict(zip(columns.schema.names, columns.schema.types, strict=True)),
            null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False,
            true_values=["t"], false_values=["f"],
        )

    def parse(self, data: bytes | io.BytesIO) -> pa.Table:
        if isinstance(data, io.BytesIO):
            data.seek(0)
            source: Any = data
        else:
            source = io.BytesIO(data)
        if source.getbuffer().nbytes == 0:
            return self.columns.schema.empty_table()
        table = pcsv.read_csv(source, read_options=self._read, parse_options=self._parse,
                              convert_options=self._convert)
        return table.cast(self.columns.schema)

    async def copy(self, connection: asyncpg.Connection, query: str, *args: Any) -> io.BytesIO:
        buffer = io.BytesIO()

        async def sink(chunk: bytes) -> None:
            buffer.write(chunk)

        await connection.copy_from_query(query, *args, output=sink, format="csv")
        return buffer


_EVENTS = CsvTables(EVENTS)
_CONVERSATIONS = CsvTables(CONVERSATIONS)
_MESSAGES = CsvTables(MESSAGES)


async def event_pages(
    connection: asyncpg.Connection, low: int, high: int, *, page_rows: int,
    since: dt.datetime | None = None, until: dt.datetime | None = None,
) -> AsyncIterator[Page]:
    """Events at positions (low, high], in position order; parsing is left to the caller's
    thread, so the next page downloads while this one is written."""
    start = low
    while start < high:
        end = min(high, start + page_rows)
        buffer = await _EVENTS.copy(connection, sql.EVENTS, start, end, since, until)
        yield lambda buffer=buffer: _EVENTS.parse(buffer)  # type: ignore[misc]
        start = end


async def conversation_pages(
    connection: asyncpg.Connection, low: int, high: int, *, page_rows: int,
    since: dt.datetime | None = None, until: dt.datetime | None = None,
) -> AsyncIterator[Page]:
    """Conversations whose last_position is in (low, high]; run inside one snapshot."""
    after: tuple[int, str] = (low, "")
    while True:
        buffer = await _CONVERSATIONS.copy(
            connection, sql.CONVERSATIONS, low, high, after[0], after[1], since, until, page_rows,
        )
        table = await asyncio.to_thread(_CONVERSATIONS.parse, buffer)
        if table.num_rows == 0:
            return
        yield lambda table=table: table  # type: ignore[misc]
        if table.num_rows < page_rows:
            return
        last = table.slice(table.num_rows - 1).to_pylist()[0]
        after = (last["last_position"], last["conversation_id"])


async def closed_conversations(
    connection: asyncpg.Connection, low: int, high: int, *, page_rows: int,
    since: dt.datetime | None = None, until: dt.datetime | None = None,
) -> AsyncIterator[list[asyncpg.Record]]:
    """Pages of (conversation_id, end_ts, last_position) of closed conversations in (low, high]."""
    after: tuple[int, str] = (low, "")
    while True:
        rows = await connection.fetch(sql.CLOSED_CONVERSATIONS, low, high, after[0], after[1],
                                      since, until, page_rows)
        if not rows:
            return
        yield rows
        after = (rows[-1]["last_position"], rows[-1]["conversation_id"])


async def transcripts(
    connection: asyncpg.Connection, conversation_ids: list[str]
) -> dict[str, pa.Table]:
    """Each conversation's messages in reading order (an empty table for one without any)."""
    buffer = await _MESSAGES.copy(connection, sql.TRANSCRIPTS, conversation_ids)
    table = await asyncio.to_thread(_MESSAGES.parse, buffer)
    tables = {conversation: MESSAGES.schema.empty_table() for conversation in conversation_ids}
    ids = table.column("conversation_id").to_pylist()
    start = 0
    for index in range(1, len(ids) + 1):
        if index == len(ids) or ids[index] != ids[start]:
            tables[ids[start]] = table.slice(start, index - start)
            start = index
    return tables
