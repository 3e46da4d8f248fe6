"""Rows out of PostgreSQL as typed Arrow tables, a bounded page at a time.

Each page is a `COPY (query) TO STDOUT (FORMAT csv)`: the server formats the rows and Arrow's
C++ CSV reader types them, in a worker thread, so no Python object is made per row or value.
Memory is bounded by the page size, whatever the size of the export.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from recorder.exports import sql
from recorder.exports.columns import CONVERSATIONS, EVENTS, MESSAGES, Columns
from recorder.logs import event

log = logging.getLogger(__name__)

#: A page to turn into a table; called in a worker thread.
Page = Callable[[], pa.Table]

#: A timestamp as the server writes it in UTC, ISO style, with a four-digit year and no era:
#: the years 1-9999 that Arrow's parser (and RFC 3339, and Python) take. `server_ts` is the
#: frame's own clock and may lie outside them (a microsecond clock read as milliseconds lands
#: in year 55000); such a value is exported as NULL, and the payload keeps what was sent.
_PLAIN_TIMESTAMP = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,6})?[+-]\d{2}(:\d{2}){0,2}$"
#: Server settings of export connections: CSV timestamps in UTC, ISO style.
SESSION_SETTINGS = {"timezone": "UTC", "datestyle": "ISO", "application_name": "recorder export"}


class CsvTables:
    """Parses the server's CSV for one set of columns: unquoted empty is NULL, `""` is ''."""

    def __init__(self, columns: Columns) -> None:
        self.columns = columns
        # One thread: the server needs the other core, and Arrow's threads cost 2-4x the CPU
        # on pages this size for no gain in wall time (bench/export.py).
        self._read = pcsv.ReadOptions(column_names=columns.names, block_size=8 << 20,
                                      use_threads=False)
        self._parse = pcsv.ParseOptions(newlines_in_values=True)
        types = dict(zip(columns.schema.names, columns.schema.types, strict=True))
        self._timestamps = [name for name, kind in types.items() if pa.types.is_timestamp(kind)]
        self._convert = pcsv.ConvertOptions(
            column_types=types,
            null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False,
            true_values=["t"], false_values=["f"],
        )
        # The same, with timestamps read as text: used only when a page has one Arrow cannot
        # parse (see _PLAIN_TIMESTAMP).
        self._convert_lenient = pcsv.ConvertOptions(
            column_types=types | {name: pa.string() for name in self._timestamps},
            null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False,
            true_values=["t"], false_values=["f"],
        )

    def parse(self, source: io.BytesIO) -> pa.Table:
        source.seek(0)
        if source.getbuffer().nbytes == 0:
            return self.columns.schema.empty_table()
        try:
            table = pcsv.read_csv(source, read_options=self._read, parse_options=self._parse,
                                  convert_options=self._convert)
        except pa.ArrowInvalid:
            if not self._timestamps:
                raise
            source.seek(0)
            table = self._parse_lenient(source)
        return table.cast(self.columns.schema)

    def _parse_lenient(self, source: io.BytesIO) -> pa.Table:
        """Timestamps outside years 1-9999 (or BC) become NULL instead of failing the page."""
        table = pcsv.read_csv(source, read_options=self._read, parse_options=self._parse,
                              convert_options=self._convert_lenient)
        for name in self._timestamps:
            index = table.schema.get_field_index(name)
            text = table.column(index)
            plain = pc.match_substring_regex(text, _PLAIN_TIMESTAMP)
            dropped = pc.sum(pc.and_(pc.invert(plain), pc.is_valid(text))).as_py() or 0
            if dropped:
                log.warning("export: %d %s value(s) outside the years 1-9999 exported as NULL",
                            dropped, name, extra=event("export.timestamps.nulled"))
            kept = pc.if_else(plain, text, pa.scalar(None, pa.string()))
            field = self.columns.schema.field(name)
            table = table.set_column(index, field, kept.cast(field.type))
        return table

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
