"""The three file formats, written from Arrow tables into a hashing file.

- parquet: pyarrow's streaming ParquetWriter, one row group per page, typed columns;
- csv: RFC 4180 (CRLF line ends, a header, fields quoted where needed and quotes doubled;
  NULL is an empty field, an empty string is `""`), through an optional gzip/zstd stream;
- jsonl: one JSON object per line (JSON columns embedded as values, timestamps RFC 3339).

Everything here runs in a worker thread: pyarrow releases the GIL while it encodes.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Protocol

import orjson
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from recorder.exports.columns import SCHEMA_VERSION, Columns

STREAM_CODECS = {"gzip": "gzip", "zstd": "zstd"}


class HashingFile:
    """A write-only file object that hashes (sha256) and counts what goes through it.

    `close` only marks it closed: the owner fsyncs and closes the real file.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self._raw.write(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._raw.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


class TableWriter(Protocol):
    rows: int

    def write(self, table: pa.Table) -> None: ...

    def close(self) -> None: ...


def _stream(file: HashingFile, compression: str) -> pa.NativeFile:
    stream: pa.NativeFile = pa.PythonFile(file, mode="w")
    if compression in STREAM_CODECS:
        stream = pa.CompressedOutputStream(stream, STREAM_CODECS[compression])
    return stream


class ParquetTableWriter:
    def __init__(self, file: HashingFile, columns: Columns, compression: str) -> None:
        schema = columns.schema.with_metadata({"recorder.schema_version": str(SCHEMA_VERSION)})
        self._writer = pq.ParquetWriter(
            pa.PythonFile(file, mode="w"), schema,
            compression="none" if compression == "none" else compression,
        )
        self._schema = schema
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table.replace_schema_metadata(self._schema.metadata))
            self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()


class CsvTableWriter:
    def __init__(self, file: HashingFile, columns: Columns, compression: str) -> None:
        self._stream = _stream(file, compression)
        self._writer = pcsv.CSVWriter(
            self._stream, columns.schema,
            write_options=pcsv.WriteOptions(include_header=True, eol="\r\n"),
        )
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table)
            self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()
        self._stream.close()


class JsonlTableWriter:
    def __init__(self, file: HashingFile, columns: Columns, compression: str) -> None:
        self._stream = _stream(file, compression)
        self._json = [name for name in columns.names if name in columns.json]
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        lines = []
        fragment = orjson.Fragment
        for row in table.to_pylist():
            for name in self._json:
                value = row[name]
                if value is not None:
                    row[name] = fragment(value)
            lines.append(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
        self._stream.write(b"".join(lines))
        self.rows += table.num_rows

    def close(self) -> None:
        self._stream.close()


WRITERS: dict[str, type[ParquetTableWriter] | type[CsvTableWriter] | type[JsonlTableWriter]] = {
    "parquet": ParquetTableWriter, "csv": CsvTableWriter, "jsonl": JsonlTableWriter,
}


def open_writer(fmt: str, file: HashingFile, columns: Columns, compression: str) -> TableWriter:
    return WRITERS[fmt](file, columns, compression)
