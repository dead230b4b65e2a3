"""Read an uploaded table (CSV or Parquet) into pandas, refusing bad input with a clear message.

Anything wrong with the *content* of a file surfaces as `TableFormatError`, whose message is
meant to be shown to the uploader as is: it says what is wrong and how to fix it. Problems with
the path itself (a missing file, no permission) are not the uploader's fault and propagate as
`OSError`.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Literal, TextIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

TableFormat = Literal["csv", "parquet"]

MAX_COLUMNS = 10_000
_PARQUET_MAGIC = b"PAR1"
_CHUNK_BYTES = 1 << 20
_C_PARSER_ERROR = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_EXPORT_HINT = "export the data again as UTF-8 CSV with a header row, or as Parquet"
# Nullable pandas dtypes keep "integer with blanks" an integer instead of decaying to float.
_MASKED_ARROW_TYPES = {
    pa.int8(): pd.Int8Dtype(),
    pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.UInt8Dtype(),
    pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}
_MASKED_DTYPES = tuple({type(dtype) for dtype in _MASKED_ARROW_TYPES.values()})


class TableFormatError(ValueError):
    """The file cannot be used as a table; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class TableLimits:
    """How large a table may be once decoded: compressed files (Parquet's dictionary and
    run-length pages) can hold millions of rows in a few KiB, so size on disk says little."""

    max_rows: int
    max_decoded_bytes: int


class TableTooLarge(TableFormatError):
    """The table is beyond a `TableLimits` bound; `limit` names which one."""

    def __init__(self, message: str, *, limit: Literal["rows", "decoded_bytes"]) -> None:
        super().__init__(message)
        self.limit = limit


def detect_format(path: Path, filename: str | None = None) -> TableFormat:
    """Guess the format, trusting content over the name because uploads are often misnamed."""
    with path.open("rb") as handle:
        if handle.read(len(_PARQUET_MAGIC)) == _PARQUET_MAGIC:
            return "parquet"
    suffix = PurePath(filename if filename is not None else path.name).suffix.lower()
    return "parquet" if suffix in {".parquet", ".pq"} else "csv"


def read_table(path: Path, fmt: TableFormat, limits: TableLimits | None = None) -> pd.DataFrame:
    """Read a whole table; every content problem raises `TableFormatError`, nothing else.

    With `limits`, a table beyond them raises `TableTooLarge` before it is decoded (Parquet:
    from the footer, then from the still dictionary-encoded text) or while it is parsed (CSV).
    """
    if fmt not in ("csv", "parquet"):
        raise TableFormatError(f"unknown table format {fmt!r}; use 'csv' or 'parquet'")
    if path.stat().st_size == 0:
        raise TableFormatError(f"the file is empty; {_EXPORT_HINT}")
    frame = _read_parquet(path, limits) if fmt == "parquet" else _read_csv(path, limits)
    if frame.shape[1] == 0:
        raise TableFormatError(f"the file has no columns; {_EXPORT_HINT}")
    if len(frame) == 0:
        raise TableFormatError(
            "the file has a header but no data rows; add at least one row of data below the header"
        )
    return frame


def _check_columns(names: list[str]) -> None:
    """Refuse column sets that would break lookups by name or blow up downstream work."""
    if len(names) > MAX_COLUMNS:
        raise TableFormatError(
            f"the table has {len(names):,} columns, more than the {MAX_COLUMNS:,} supported; "
            "drop unused columns or reshape the data into fewer, longer columns"
        )
    for position, name in enumerate(names, start=1):
        if not name.strip():
            raise TableFormatError(
                f"column {position} has an empty name; give every column a name in the header"
            )
    duplicates = [name for name, seen in Counter(names).items() if seen > 1]
    if duplicates:
        listed = ", ".join(repr(name) for name in duplicates[:5])
        raise TableFormatError(
            f"duplicate column names: {listed}; rename the columns so every name is unique"
        )


def _check_text(path: Path) -> bool:
    """Refuse binary or non-UTF-8 files up front, with the byte offset of the first problem.

    Returns whether the text contains a double quote, i.e. whether fields may be quoted.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, quoted = 0, False
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            nul = chunk.find(b"\x00")
            if nul >= 0:
                raise TableFormatError(
                    f"the file looks binary (a NUL byte at offset {offset + nul}), not CSV text; "
                    f"{_EXPORT_HINT}"
                )
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                where = offset - pending + exc.start
                raise TableFormatError(
                    f"the file is not valid UTF-8 text (byte offset {where}); "
                    "re-save it with UTF-8 encoding, or export it as Parquet"
                ) from None
            offset += len(chunk)
            quoted = quoted or b'"' in chunk
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise TableFormatError(
            "the file ends in the middle of a UTF-8 character, so it is truncated or not UTF-8; "
            "upload the complete file saved with UTF-8 encoding"
        ) from None
    return quoted


def _csv_error(exc: Exception) -> TableFormatError:
    """Turn a pandas parser error into a message naming the offending line."""
    message = str(exc).strip()
    match = _C_PARSER_ERROR.search(message)
    if match:
        expected, line, saw = match.groups()
        return TableFormatError(
            f"line {line} has {saw} fields, expected {expected}; every row needs as many fields "
            "as the header (quote values that contain commas)"
        )
    first_line = message.splitlines()[0] if message else type(exc).__name__
    return TableFormatError(f"could not parse the file as CSV ({first_line}); {_EXPORT_HINT}")


def _too_many_rows(rows: int | None, limits: TableLimits) -> TableTooLarge:
    """`rows` None: parsing stopped one row past the limit, so the count is unknown."""
    counted = f"{rows:,} rows, more than" if rows is not None else "more rows than"
    return TableTooLarge(
        f"the table has {counted} the {limits.max_rows:,} accepted; "
        "split it into several files or sample it",
        limit="rows",
    )


def _check_decoded_bytes(decoded: int, limits: TableLimits) -> None:
    if decoded > limits.max_decoded_bytes:
        raise TableTooLarge(
            f"the table decodes to about {decoded:,} bytes, more than the "
            f"{limits.max_decoded_bytes:,} accepted; split it into several files or sample it",
            limit="decoded_bytes",
        )


def _read_csv(path: Path, limits: TableLimits | None) -> pd.DataFrame:
    """Parse with pandas' C parser; names are checked on the raw header before pandas mangles.

    CSV text is not compressed, so its size on disk bounds its decoded size; rows are bounded
    by parsing at most one row more than allowed."""
    if limits is not None:
        _check_decoded_bytes(path.stat().st_size, limits)
    quoted = _check_text(path)
    try:
        # header=None keeps duplicate/empty names raw, and makes an over-long first data row an
        # error instead of a silently truncated one (pandas only warns when index_col=False).
        head = pd.read_csv(
            path,
            header=None,
            nrows=2,
            dtype=str,
            keep_default_na=False,
            encoding="utf-8-sig",
            on_bad_lines="error",
            index_col=False,
        )
        names = [str(value) for value in head.iloc[0]]
        _check_columns(names)
        frame = pd.read_csv(
            path,
            header=0,
            encoding="utf-8-sig",
            on_bad_lines="error",
            index_col=False,
            dtype_backend="numpy_nullable",
            low_memory=False,  # infer each column's type from all rows, never mixed per chunk
            nrows=None if limits is None else limits.max_rows + 1,
        )
    except pd.errors.EmptyDataError:
        raise TableFormatError(
            f"the file contains no data, only blank lines; {_EXPORT_HINT}"
        ) from None
    except (ValueError, OverflowError, csv.Error) as exc:
        if isinstance(exc, TableFormatError):
            raise
        raise _csv_error(exc) from exc
    if frame.shape[1] != len(names):
        raise TableFormatError(f"the header could not be read consistently; {_EXPORT_HINT}")
    if limits is not None and len(frame) > limits.max_rows:
        raise _too_many_rows(None, limits)
    frame.columns = pd.Index(names)
    # pandas pads short rows with missing values; they can only hide where the last column is null.
    if len(names) > 1 and bool(frame.iloc[:, -1].isna().any()):
        _refuse_short_rows(path, len(names), quoted)
    return _normalise(frame)


def _refuse_short_rows(path: Path, expected: int, quoted: bool) -> None:
    """Find a row with too few fields, which pandas would silently pad with nulls."""
    seen_header = False
    with path.open(newline="", encoding="utf-8-sig") as handle:
        try:
            for line, count, blank in _field_counts(handle, quoted):
                if blank:
                    continue  # pandas skips blank lines too
                if seen_header and count < expected:
                    raise TableFormatError(
                        f"line {line} has {count} fields, expected {expected}; every row needs "
                        "as many fields as the header (leave a value empty, but keep its comma)"
                    )
                seen_header = True
        except csv.Error:
            return  # pandas parsed the file; do not refuse on a stricter parser's complaint


def _field_counts(handle: TextIO, quoted: bool) -> Iterator[tuple[int, int, bool]]:
    """(first line, field count, is blank) per record; quote-free text needs no csv parser."""
    if not quoted:  # three times faster than csv.reader, and exact when nothing is quoted
        for number, text in enumerate(handle, start=1):
            yield number, text.count(",") + 1, not text.strip()
        return
    reader = csv.reader(handle)
    line = 1
    for row in reader:
        yield line, len(row), len(row) <= 1 and not "".join(row).strip()
        line = reader.line_num + 1


def _read_parquet(path: Path, limits: TableLimits | None) -> pd.DataFrame:
    """Check the schema and size from the footer first, so a 50,000-column file or a few KiB
    that decode to millions of rows are refused cheaply."""
    try:
        with pq.ParquetFile(path) as parquet:
            schema = parquet.schema_arrow
            _check_columns([str(name) for name in schema.names])
            for field in schema:
                if not _supported_arrow_type(field.type):
                    raise TableFormatError(
                        f"column {field.name!r} has Parquet type {field.type}, which is not "
                        "supported; store it as numbers, booleans, strings or timestamps "
                        "(flatten nested values, encode bytes as text)"
                    )
            if limits is None:
                table = parquet.read(use_pandas_metadata=False)
            else:
                table = _read_parquet_within(path, parquet.metadata, schema, limits)
        frame = table.to_pandas(
            ignore_metadata=True, date_as_object=False, types_mapper=_MASKED_ARROW_TYPES.get
        )
    except TableFormatError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TableFormatError(
            f"the file is not a readable Parquet file, it may be truncated or corrupt "
            f"({first_line}); upload it again or export it as CSV"
        ) from exc
    return _normalise(frame)


_TEXT_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
_POINTER_BYTES = 8  # per row of a variable-width column: an offset, or a pointer in pandas


def _read_parquet_within(
    path: Path, metadata: pq.FileMetaData, schema: pa.Schema, limits: TableLimits
) -> pa.Table:
    """Rows and fixed-width bytes from the footer, before any page is read; text read still
    dictionary-encoded (memory bounded by the file's pages), measured, and only then decoded:
    a dictionary page lets one long string repeated a million times cost a few bytes."""
    rows = metadata.num_rows
    if rows > limits.max_rows:
        raise _too_many_rows(rows, limits)
    stored: Counter[str] = Counter()  # per column, its pages once decompressed
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for column in range(row_group.num_columns):
            chunk = row_group.column(column)
            stored[chunk.path_in_schema] += chunk.total_uncompressed_size
    text = [field.name for field in schema if _is_text(field.type)]
    per_row, other_variable = 0, 0
    for field in schema:
        if field.name in text:
            per_row += _POINTER_BYTES
            continue
        try:
            per_row += (field.type.bit_width + 7) // 8
        except ValueError:  # variable width: at least its pages' bytes
            per_row += _POINTER_BYTES
            other_variable += stored[field.name]
    stored_text = sum(stored[name] for name in text)
    _check_decoded_bytes(rows * per_row + other_variable + stored_text, limits)
    with pq.ParquetFile(path, metadata=metadata, read_dictionary=text) as parquet:
        table = parquet.read(use_pandas_metadata=False)
    if table.num_rows > limits.max_rows:  # the footer claimed fewer rows than the pages hold
        raise _too_many_rows(table.num_rows, limits)
    decoded_text = sum(_decoded_text_bytes(table.column(name)) for name in text)
    _check_decoded_bytes(table.num_rows * per_row + other_variable + decoded_text, limits)
    for name in text:
        index = table.schema.get_field_index(name)
        table = table.set_column(
            index, schema.field(name), table.column(name).cast(schema.field(name).type)
        )
    return table


def _is_text(arrow_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(arrow_type):
        return _is_text(arrow_type.value_type)
    return any(check(arrow_type) for check in _TEXT_TYPES)


def _decoded_text_bytes(column: pa.ChunkedArray) -> int:
    """What a dictionary-encoded text column weighs once every index is replaced by its value."""
    total = 0
    for chunk in column.chunks:
        if isinstance(chunk, pa.DictionaryArray):
            lengths = pc.take(pc.binary_length(chunk.dictionary), chunk.indices)
        else:
            lengths = pc.binary_length(chunk)
        total += pc.sum(lengths).as_py() or 0
    return int(total)


def _supported_arrow_type(arrow_type: pa.DataType) -> bool:
    """Flat types that profiling and training understand; nested or binary ones are refused."""
    if pa.types.is_dictionary(arrow_type):
        return _supported_arrow_type(arrow_type.value_type)
    checks = (
        pa.types.is_null,
        pa.types.is_boolean,
        pa.types.is_integer,
        pa.types.is_floating,
        pa.types.is_decimal,
        pa.types.is_string,
        pa.types.is_large_string,
        pa.types.is_string_view,
        pa.types.is_timestamp,
        pa.types.is_date,
    )
    return any(check(arrow_type) for check in checks)


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Settle on one dtype per kind: numpy where nothing is missing, nullable only where needed.

    Masked floats become float64 with NaN and NA-strings become pandas' default string dtype,
    so CSV and Parquet uploads of the same data come out alike. Names are unique by now.
    """
    columns: dict[str, object] = {}
    for name, column in frame.items():
        dtype = column.dtype
        if isinstance(dtype, pd.Float32Dtype | pd.Float64Dtype):
            columns[str(name)] = column.to_numpy(dtype=np.float64, na_value=np.nan)
        elif isinstance(dtype, pd.StringDtype) and dtype.na_value is pd.NA:
            columns[str(name)] = column.astype("str").array
        elif isinstance(dtype, _MASKED_DTYPES) and not column.array.isna().any():
            columns[str(name)] = column.to_numpy()  # no NA: plain numpy dtype
        else:
            columns[str(name)] = column.array
    return pd.DataFrame(columns, copy=False)
