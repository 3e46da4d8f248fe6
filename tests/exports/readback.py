"""Reading export files back with independent readers, into comparable Python rows.

- Parquet: pyarrow.parquet (the file's own typed schema).
- CSV: parsed twice: by a strict RFC 4180 tokenizer written here (CRLF row ends, quotes
  doubled, and which fields were quoted, so NULL, an unquoted empty field, differs from '',
  a quoted `""`), and by Python's csv module, which must agree on every value.
- jsonl: orjson, one object per line.

`normalize` turns a row of any format into the same shape as `expected` builds from the
database: timestamps as aware datetimes (compared as instants), JSON columns parsed.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from recorder.exports.columns import Columns

_UNQUOTED = re.compile(r'[^,\r\n"]*')


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def decompress(path: Path, compression: str) -> bytes:
    """The bytes of a jsonl/csv file, undone from its stream codec."""
    if compression == "gzip":
        with gzip.open(path, "rb") as handle:
            return handle.read()
    if compression == "zstd":
        with pa.CompressedInputStream(pa.OSFile(str(path)), "zstd") as stream:
            return bytes(stream.read())
    assert compression == "none", compression
    return path.read_bytes()


def rfc4180(text: str) -> list[list[tuple[str, bool]]]:
    """Strict RFC 4180 with CRLF: every record, each field as (value, was it quoted)."""
    rows: list[list[tuple[str, bool]]] = []
    row: list[tuple[str, bool]] = []
    at, end = 0, len(text)
    while at < end:
        if text[at] == '"':
            parts, start = [], at + 1
            while True:
                close = text.index('"', start)
                parts.append(text[start:close])
                if text.startswith('""', close):
                    parts.append('"')
                    start = close + 2
                    continue
                at = close + 1
                break
            row.append(("".join(parts), True))
        else:
            match = _UNQUOTED.match(text, at)
            assert match is not None
            row.append((match.group(), False))
            at = match.end()
        if text.startswith(",", at):
            at += 1
            continue
        assert text.startswith("\r\n", at), f"a record ends with CRLF: {text[at:at + 20]!r}"
        at += 2
        rows.append(row)
        row = []
    assert not row, "the file must end with CRLF"
    return rows


def read_csv(data: bytes, columns: Columns) -> list[dict[str, Any]]:
    """Rows of an export CSV: NULL (an unquoted empty field) as None, other values as text."""
    text = data.decode("utf-8")
    records = rfc4180(text)
    by_module = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    assert by_module == [[value for value, _ in record] for record in records]
    assert records, "a CSV export always has a header"
    header, body = records[0], records[1:]
    assert [name for name, _ in header] == columns.names
    rows = []
    for record in body:
        assert len(record) == len(columns.names)
        row: dict[str, Any] = {}
        for name, (value, quoted) in zip(columns.names, record, strict=True):
            row[name] = None if value == "" and not quoted else value
            kind = columns.schema.field(name).type
            if pa.types.is_string(kind) and row[name] is not None:
                assert quoted, f"{name}: text is quoted, so that '' differs from NULL"
            elif not pa.types.is_string(kind):
                assert not quoted, f"{name}: only text is quoted"
        rows.append(row)
    return rows


def read_jsonl(data: bytes) -> list[dict[str, Any]]:
    if not data:
        return []
    assert data.endswith(b"\n")
    return [orjson.loads(line) for line in data.split(b"\n")[:-1]]


def read_rows(path: Path, fmt: str, compression: str, columns: Columns) -> list[dict[str, Any]]:
    """An export file's rows, normalized (see `normalize`)."""
    if fmt == "parquet":
        table = pq.read_table(path)
        assert table.schema.remove_metadata() == columns.schema
        return [normalize(row, columns, fmt) for row in table.to_pylist()]
    data = decompress(path, compression)
    raw = read_csv(data, columns) if fmt == "csv" else read_jsonl(data)
    return [normalize(row, columns, fmt) for row in raw]


def normalize(row: Mapping[str, Any], columns: Columns, fmt: str) -> dict[str, Any]:
    assert list(row) == columns.names, list(row)
    result: dict[str, Any] = {}
    for field in columns.schema:
        value = row[field.name]
        if value is None:
            result[field.name] = None
        elif field.name in columns.json:
            result[field.name] = value if fmt == "jsonl" else orjson.loads(value)
        elif pa.types.is_timestamp(field.type):
            if isinstance(value, str):
                value = dt.datetime.fromisoformat(value)
            assert value.utcoffset() == dt.timedelta(0), value
            result[field.name] = value
        elif pa.types.is_integer(field.type):
            assert fmt != "jsonl" or isinstance(value, int)
            result[field.name] = int(value)
        elif pa.types.is_boolean(field.type):
            if isinstance(value, str):
                assert value in ("true", "false"), value
                value = value == "true"
            result[field.name] = value
        else:
            assert isinstance(value, str)
            result[field.name] = value
    return result


def expected(records: Iterable[Mapping[str, Any]], columns: Columns) -> list[dict[str, Any]]:
    """Database rows (asyncpg records, JSON columns selected as text) in the same shape."""
    rows = []
    for record in records:
        row = {}
        for name in columns.names:
            value = record[name]
            if value is not None and name in columns.json:
                value = orjson.loads(value)
            row[name] = value
        rows.append(row)
    return rows
